"""What is particular to the embedded store: its SQL merge path, files, layout and versions."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from marketlake.errors import ConfigError, StoreError, StoreVersionError
from marketlake.schema import BAR_SCHEMA
from marketlake.store import Store, WriteResult, open_store
from marketlake.store.duckdb import DuckDBStore, _increasing, path_of, timestamptz
from marketlake.store.duckdb_bars import ROW_GROUP
from marketlake.store.merge import find_repeats, match_times, same_values, split_groups
from tests.conftest import bars_for
from tests.store import test_contract as contract

# Every contract test that needs only a store, run again with the SQL merge path forced.
CONTRACT = {
    name: fn
    for name, fn in vars(contract).items()
    if name.startswith("test_") and list(inspect.signature(fn).parameters) == ["store"]
}


@pytest.fixture
def sql_store() -> Iterator[Store]:
    store = DuckDBStore("duckdb:///:memory:", max_fast_groups=0)
    yield store
    store.close()


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_the_sql_merge_path_keeps_the_contract(sql_store: Store, name: str) -> None:
    CONTRACT[name](sql_store)


def test_the_sql_merge_path_agrees_with_the_reference_model(sql_store: Store) -> None:
    test: Callable[[Store], None] = contract.test_writes_match_a_reference_model
    test(sql_store)


def test_per_series_writes_in_chunks_of_groups_agree_with_the_reference_model() -> None:
    """Batches of more series than ``max_fast_groups`` are merged a few series at a time."""
    with DuckDBStore("duckdb:///:memory:", max_fast_groups=2) as store:
        contract.test_per_series_results_match_a_reference_model(store)


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("duckdb:///:memory:", ":memory:"),
        ("duckdb:///./data/x.duckdb", "./data/x.duckdb"),
        ("duckdb:////tmp/x.duckdb", "/tmp/x.duckdb"),
        ("duckdb:///x.duckdb", "/x.duckdb"),
    ],
)
def test_uri_paths(uri: str, path: str) -> None:
    assert path_of(uri) == path


def test_a_uri_without_slashes_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"duckdb:///path/to/file\.duckdb"):
        open_store("duckdb:data.duckdb")


def test_an_unknown_scheme_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown store URI 'sqlite:///x'.*duckdb://"):
        open_store("sqlite:///x")


def test_bars_survive_closing_and_reopening(tmp_path: Path) -> None:
    uri = f"duckdb:///{tmp_path}/sub/store.duckdb"
    with open_store(uri) as store:
        store.write_bars(bars_for("AAPL", "1h"))
    with open_store(uri) as store:
        assert store.read_bars("AAPL", "1h").table.equals(bars_for("AAPL", "1h"))
        store.write_bars(bars_for("MSFT", "1h"))  # a new series gets its own id
        assert store.write_bars(bars_for(["AAPL", "MSFT"], "1h")).duplicates == 28
        assert store.read_bars("MSFT", "1h").table.equals(bars_for("MSFT", "1h"))


def test_a_read_only_store_reads(tmp_path: Path) -> None:
    uri = f"duckdb:///{tmp_path}/store.duckdb"
    with open_store(uri) as store:
        store.write_bars(bars_for("AAPL", "1h"))
    reader = DuckDBStore(uri, read_only=True)
    try:
        assert reader.count_bars() == 14
        with pytest.raises(StoreError, match="read-only"):
            reader.write_bars(bars_for("MSFT", "1h"))
    finally:
        reader.close()


def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    uri = f"duckdb:///{tmp_path}/store.duckdb"
    with open_store(uri) as store:
        store.execute("UPDATE marketlake_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(
        StoreVersionError,
        match=r"schema version 99, newer than this "
        r"MarketLake's .*upgrade MarketLake",
    ):
        open_store(uri)


def test_a_store_of_the_first_layout_is_converted(tmp_path: Path) -> None:
    """Files written with one wide ``bars`` table open with their bars intact."""
    path = tmp_path / "old.duckdb"
    bars = bars_for(["AAPL", "BTCUSDT"], "1h")
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE TABLE marketlake_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO marketlake_meta VALUES ('schema_version', '1')")
    con.execute(
        "CREATE TABLE bars (symbol VARCHAR NOT NULL, timeframe VARCHAR NOT NULL, "
        "ts TIMESTAMPTZ NOT NULL, open DOUBLE NOT NULL, high DOUBLE NOT NULL, low DOUBLE NOT NULL,"
        " close DOUBLE NOT NULL, volume DOUBLE NOT NULL, trades BIGINT, vwap DOUBLE, "
        "source VARCHAR NOT NULL)"
    )
    con.register("old", bars)
    con.execute("INSERT INTO bars SELECT * FROM old")
    con.close()
    with open_store(f"duckdb:///{path}") as store:
        assert store.read_bars(["AAPL", "BTCUSDT"], "1h").table.equals(bars)
        assert store.write_bars(bars) == WriteResult(duplicates=bars.num_rows)


def test_bars_of_several_sources_read_back_per_row(duck: Store) -> None:
    bars = bars_for("AAPL", "1h")
    sources = pa.array(["yahoo", "alpaca"] * 7)
    duck.write_bars(bars.set_column(10, BAR_SCHEMA.field("source"), sources))
    assert duck.read_bars("AAPL", "1h").table.column("source").to_pylist() == sources.to_pylist()


def test_the_bars_view_serves_sql_readers(duck: Store) -> None:
    duck.write_bars(bars_for(["AAPL", "MSFT"], "1h"))
    table = duck.query("SELECT symbol, count(*) AS n FROM bars GROUP BY symbol ORDER BY symbol")
    assert table.to_pylist() == [{"symbol": "AAPL", "n": 14}, {"symbol": "MSFT", "n": 14}]


def test_every_write_moves_the_generation(duck: Store) -> None:
    before = duck.generation
    duck.write_bars(bars_for("AAPL", "1h"))
    assert duck.generation > before


# -- the NumPy helpers behind the fast path ---------------------------------------------


def test_find_repeats_keeps_the_first_row_of_every_time() -> None:
    table = bars_for("AAPL", "1h").slice(0, 3)
    batch = pa.concat_tables([table, table.slice(1, 1), table.slice(0, 1)])
    ts = batch.column("ts").cast(pa.int64()).to_numpy()
    repeats = find_repeats(ts, batch)
    assert repeats.keep.tolist() == [0, 1, 2]
    assert sorted(zip(repeats.repeat.tolist(), repeats.first.tolist(), strict=True)) == [
        (3, 1),
        (4, 0),
    ]
    assert (repeats.duplicates, repeats.conflicts, repeats.identity) == (2, 0, False)


def test_match_times_finds_times_in_unsorted_stored_rows() -> None:
    match = match_times(np.array([1, 2, 5, 9]), np.array([9, 4, 1]))
    assert match.found.tolist() == [True, False, False, True]
    assert match.stored_index[match.found].tolist() == [2, 0]
    assert match_times(np.array([1, 2]), np.array([1, 2])).identity


def test_same_values_treats_nulls_and_nans_as_equal() -> None:
    a = pa.table(
        {
            "open": [1.0, float("nan"), None],
            "high": [1.0] * 3,
            "low": [1.0] * 3,
            "close": [1.0] * 3,
            "volume": [1.0] * 3,
            "trades": pa.array([1, None, 2], pa.int64()),
            "vwap": [None, 2.0, 3.0],
        }
    )
    b = a.set_column(5, "trades", pa.array([1, None, None], pa.int64()))
    assert same_values(a, a).tolist() == [True, True, True]
    assert same_values(a, b).tolist() == [True, True, False]


def test_split_groups_orders_groups_and_stops_at_the_limit() -> None:
    msft, aapl = bars_for("MSFT", "1h"), bars_for("AAPL", "1h")
    batch = pa.concat_tables([msft.slice(0, 2), aapl.slice(0, 3), msft.slice(2, 1)])
    groups = split_groups(batch, 8)
    assert groups is not None
    assert [(s, t, g.num_rows) for s, t, g in groups] == [("MSFT", "1h", 3), ("AAPL", "1h", 3)]
    assert split_groups(batch, 1) is None


def test_read_bars_sorted_across_row_groups(duck: Store) -> None:
    # more than two row groups, the later half written first: each batch DuckDB returns
    # is in order, the order breaks only between them
    bars = bars_for("BTCUSDT", "1m", "2024-03-04", "2024-09-04")
    assert bars.num_rows > 2 * ROW_GROUP
    half = bars.num_rows // 2
    duck.write_bars(bars.slice(half))
    duck.write_bars(bars.slice(0, half))
    assert duck.read_bars("BTCUSDT", "1m").table.equals(bars)


def test_increasing_reads_times_chunk_by_chunk() -> None:
    def times(*chunks: list[int]) -> pa.ChunkedArray:
        return pa.chunked_array([pa.array(c, pa.int64()) for c in chunks], pa.int64()).cast(
            pa.timestamp("us", tz="UTC")
        )

    assert _increasing(times([1, 2], [], [3, 4]))
    assert _increasing(times())
    assert not _increasing(times([1, 2], [], [2, 3]))
    assert not _increasing(times([1, 3, 2]))


def test_read_bounds_are_exact_to_the_microsecond_in_any_offset(duck: Store) -> None:
    bars = bars_for("AAPL", "1h")
    duck.write_bars(bars)
    at = bars.column("ts").to_pylist()
    plus_two = timezone(timedelta(hours=2))
    tick = timedelta(microseconds=1)
    table = duck.read_bars("AAPL", "1h", start=at[2] + tick, end=at[5].astimezone(plus_two)).table
    assert table.column("ts").to_pylist() == at[3:5]
    table = duck.read_bars("AAPL", "1h", start=at[2].astimezone(plus_two), end=at[5] + tick).table
    assert table.column("ts").to_pylist() == at[2:6]
    moment = datetime(2024, 3, 4, 16, 0, 0, 1, tzinfo=plus_two)
    assert timestamptz(moment) == "TIMESTAMPTZ '2024-03-04T14:00:00.000001+00:00'"
    with pytest.raises(ValueError, match="no timezone"):
        timestamptz(datetime(2024, 1, 1))  # noqa: DTZ001 - naive on purpose


def test_read_bars_of_an_unsorted_series_come_back_sorted(duck: Store) -> None:
    bars = bars_for("AAPL", "1h")
    duck.write_bars(bars.slice(7))
    duck.write_bars(bars.slice(0, 7))
    assert duck.read_bars("AAPL", "1h").table.equals(bars)
    latest = duck.latest_bar("AAPL", "1h")
    assert latest is not None
    assert latest["ts"] == datetime(2024, 3, 5, 20, tzinfo=UTC)


# -- start-up: what opening the store loads ------------------------------------------------


def test_the_catalogue_names_the_tables_of_the_sqlalchemy_definitions() -> None:
    """store.catalogue (plain names, no SQLAlchemy) agrees with store.tables."""
    from marketlake.store import catalogue, tables

    assert catalogue.SCHEMA_VERSION == tables.SCHEMA_VERSION
    assert {n: tuple(c.name for c in t.columns) for n, t in tables.TABLES.items()} == (
        catalogue.COLUMNS
    )
    assert {
        n: tuple(c.name for c in t.primary_key.columns) for n, t in tables.TABLES.items()
    } == catalogue.PRIMARY_KEYS


def test_parameters_bind_without_pandas_and_pandas_still_works_after() -> None:
    """While pandas is not loaded, DuckDB binds parameters of every kind without importing
    it (store.duckdb._bound); once pandas is imported, its NaT still binds as NULL."""
    probe = """
import sys
from datetime import UTC, datetime
from decimal import Decimal
from marketlake.store import open_store

store = open_store("duckdb:///:memory:")
when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
values = ["x'); DROP TABLE jobs; --", 7, 2.5, True, None, when, b"\\x00", Decimal("1.5")]
sql = "SELECT " + ", ".join("?" for _ in values)
row = store.query(sql, values).to_pylist()[0]
assert list(row.values()) == values, row
assert store.execute("SELECT ? + 1", [41]) == 42
assert "pandas" not in sys.modules
import pandas as pd
assert store.query("SELECT ? IS NULL AS null", [pd.NaT]).to_pylist() == [{"null": True}]
print("ok")
"""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_ts_micros_and_string_array_match_what_pyarrow_builds() -> None:
    """The buffer-built forms (no pandas import) equal pyarrow's own."""
    from marketlake.schema import TS_TYPE, string_array
    from marketlake.store.merge import ts_micros

    ts = pa.array(np.arange(6, dtype=np.int64) * 1000).cast(TS_TYPE)
    for table in (
        pa.table({"ts": ts}),
        pa.table({"ts": ts}).slice(2, 3),
        pa.table({"ts": pa.chunked_array([ts.slice(0, 2), ts.slice(4, 2)])}),
        pa.table({"ts": ts}).slice(0, 0),
    ):
        expected = table.column("ts").combine_chunks().cast(pa.int64()).to_numpy()
        got = ts_micros(table)
        assert got.dtype == np.int64
        assert got.tolist() == expected.tolist()
    for names in ([], [""], ["yahoo", "", "binance", "é"]):
        built = string_array(names)
        built.validate(full=True)
        assert built.equals(pa.array(names, pa.string()))
