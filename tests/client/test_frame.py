"""``frame``: Arrow tables as the pandas frames both transports hand out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from marketlake.client.lake import frame
from marketlake.schema import constant_column

N = 1000
TIMES = pa.array(np.arange(N, dtype=np.int64) * 60_000_000, pa.timestamp("us", tz="UTC"))
VALUES = np.linspace(1.0, 2.0, N)


def _plainly(table: pa.Table, index: str | None) -> pd.DataFrame:
    """The frame by the obvious route: hash every string, convert, set the index."""
    for name in ("source", "symbol"):
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, name, table.column(i).dictionary_encode())
    df = table.to_pandas()
    return df.set_index(index) if index and index in df.columns else df


SOURCES = {
    "one source": constant_column("bench", N),
    "two sources": pa.array(["a" if i % 3 else "b" for i in range(N)]),
    "a null source first": pa.array([None, *["a"] * (N - 1)]),
    "a null source later": pa.array(["a", None, *["a"] * (N - 2)]),
    "no source": pa.nulls(N, pa.string()),
}


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("index", ["ts", None])
@pytest.mark.parametrize("chunks", [1, 3])
def test_frames_equal_the_plain_conversion(source: str, index: str | None, chunks: int) -> None:
    table = pa.table(
        {"ts": TIMES, "open": VALUES, "trades": np.arange(N), "source": SOURCES[source]}
    )
    table = pa.Table.from_batches(table.to_batches(max_chunksize=-(-N // chunks)))
    df = frame(table, "pandas", index=index, categorical=("source",))
    expected = _plainly(table, index)
    pd.testing.assert_frame_equal(df, expected, check_exact=True)
    assert df["source"].cat.codes.dtype == expected["source"].cat.codes.dtype
    df["open"] *= 2  # the frame owns its memory
    df.iloc[0, 1] = -1
    assert df["open"].iloc[1] == 2 * VALUES[1]


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", None])
@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_the_index_keeps_the_unit_and_zone_of_the_times(unit: str, tz: str | None) -> None:
    times = pa.array(np.arange(N, dtype=np.int64), pa.timestamp(unit, tz=tz))
    table = pa.table({"ts": times, "open": VALUES})
    for part in (table, table.slice(0, 0)):
        df = frame(part, "pandas")
        expected = _plainly(part, "ts")
        pd.testing.assert_frame_equal(df, expected, check_exact=True)
        assert df.index.dtype == expected.index.dtype
