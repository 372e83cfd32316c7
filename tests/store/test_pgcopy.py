"""The binary COPY codec: exact wire bytes out, exact Arrow in, clear errors on odd layouts."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from marketlake.store.pgcopy import (
    HEADER,
    PG_EPOCH_US,
    TRAILER,
    CopyData,
    CopyFormatError,
    FastSelect,
    decode_rows,
    encode_rows,
)

SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("price", pa.float64()),
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("side", pa.string()),
    ]
)
T0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
T0_US = int(T0.timestamp()) * 1_000_000


def _field(data: bytes | None) -> bytes:
    return struct.pack("!i", -1) if data is None else struct.pack("!i", len(data)) + data


def test_encoding_writes_the_postgres_binary_row_format() -> None:
    table = pa.table(
        {
            "ts": pa.array([T0_US], pa.timestamp("us", tz="UTC")),
            "price": [1.5],
            "n": pa.array([None], pa.int64()),
            "symbol": ["ÆB"],
        }
    )
    stream = b"".join(bytes(piece) for piece in encode_rows(table))
    row = (
        struct.pack("!h", 4)
        + _field(struct.pack("!q", T0_US - PG_EPOCH_US))
        + _field(struct.pack("!d", 1.5))
        + _field(None)
        + _field("ÆB".encode())
    )
    assert stream == HEADER + row + TRAILER


def test_rows_of_different_layouts_are_all_sent() -> None:
    table = pa.table({"v": pa.array([1.0, None, 3.0, None]), "s": ["a", "bb", "a", None]})
    stream = b"".join(bytes(piece) for piece in encode_rows(table, chunk_rows=3))
    rows = {
        struct.pack("!h", 2) + _field(struct.pack("!d", 1.0)) + _field(b"a"),
        struct.pack("!h", 2) + _field(None) + _field(b"bb"),
        struct.pack("!h", 2) + _field(struct.pack("!d", 3.0)) + _field(b"a"),
        struct.pack("!h", 2) + _field(None) + _field(None),
    }
    body = stream[len(HEADER) : -len(TRAILER)]
    assert len(body) == sum(len(r) for r in rows)
    assert all(r in body for r in rows)


def test_many_distinct_strings_are_gathered_row_by_row() -> None:
    values = [f"id-{i}" for i in range(100)]
    stream = b"".join(bytes(p) for p in encode_rows(pa.table({"s": values})))
    assert (
        stream
        == HEADER + b"".join(struct.pack("!h", 1) + _field(v.encode()) for v in values) + TRAILER
    )


def test_types_without_a_binary_mapping_are_refused() -> None:
    with pytest.raises(TypeError, match="does not handle Arrow type bool"):
        list(encode_rows(pa.table({"b": [True]})))


def test_the_select_list_coalesces_nullable_numbers_and_joins_texts() -> None:
    spec = FastSelect(SCHEMA, (("symbol", "upper(symbol)"),))
    assert spec.select_list() == (
        "ts, coalesce(price, 0), ((price IS NULL)::int * 1 + (side IS NULL)::int * 2)::int4, "
        "upper(symbol) || chr(31) || coalesce(side, '')"
    )
    assert spec.prefix_bytes == 2 + 12 * 2 + 8 + 4
    assert FastSelect(pa.schema([pa.field("x", pa.int64(), nullable=False)])).select_list() == (
        "x, 0::int4"
    )


def _row(ts_us: int, price: float, flags: int, text: str) -> bytes:
    return (
        struct.pack("!h", 4)
        + _field(struct.pack("!q", ts_us - PG_EPOCH_US))
        + _field(struct.pack("!d", price))
        + _field(struct.pack("!i", flags))
        + _field(text.encode())
    )


def _stream(*messages: bytes) -> CopyData:
    data = CopyData()
    for message in messages:
        data.buffer += message
        data.lengths.append(len(message))
    return data


def test_decoding_restores_values_nulls_and_texts() -> None:
    first = _row(T0_US, 2.5, 0, "AAPL\x1fbuy")
    second = _row(T0_US + 60_000_000, 0.0, 3, "MSFT\x1f")
    table = decode_rows(_stream(HEADER + first, second, TRAILER), FastSelect(SCHEMA))
    assert table.schema == SCHEMA
    assert table.to_pylist() == [
        {"ts": T0, "price": 2.5, "symbol": "AAPL", "side": "buy"},
        {
            "ts": datetime(2024, 3, 4, 14, 31, tzinfo=UTC),
            "price": None,
            "symbol": "MSFT",
            "side": None,
        },
    ]


def test_the_header_and_trailer_may_travel_alone_or_with_a_row() -> None:
    row = _row(T0_US, 1.0, 0, "X\x1fsell")
    spec = FastSelect(SCHEMA)
    alone = decode_rows(_stream(HEADER, row, TRAILER), spec)
    together = decode_rows(_stream(HEADER + row + TRAILER), spec)
    assert alone.equals(together)
    assert alone.num_rows == 1
    assert decode_rows(_stream(HEADER, TRAILER), spec).num_rows == 0
    assert decode_rows(CopyData(), spec).num_rows == 0


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ((b"nonsense",), "not a binary COPY stream"),
        ((HEADER, _row(T0_US, 1.0, 0, "A\x1fb\x1fc"), TRAILER), r"contains the U\+001F separator"),
        ((HEADER, _row(T0_US, 1.0, 0, "A")[:20], TRAILER), "shorter than their fixed part"),
        (
            (HEADER, struct.pack("!h", 3) + _row(T0_US, 1.0, 0, "A\x1fb")[2:], TRAILER),
            "unexpected field count",
        ),
        ((HEADER, _row(T0_US, 1.0, 0, "A\x1fb") + b"!", TRAILER), "do not match their text field"),
    ],
)
def test_a_layout_the_select_did_not_promise_is_a_format_error(
    messages: tuple[bytes, ...], problem: str
) -> None:
    with pytest.raises(CopyFormatError, match=problem):
        decode_rows(_stream(*messages), FastSelect(SCHEMA))
