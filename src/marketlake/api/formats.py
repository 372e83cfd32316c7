"""Bars on the wire: JSON pages and streamed CSV, Arrow IPC and Parquet.

JSON rows are written by Polars from the Arrow table (no Python object per
row). The bulk formats are generators that turn each Arrow batch into bytes as
it comes from the store, so a response of millions of rows holds one batch in
memory at a time.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Literal

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from marketlake.schema import BAR_SCHEMA

Format = Literal["json", "csv", "arrow", "parquet"]

MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}
_ACCEPT: dict[str, Format] = {
    "application/json": "json",
    "text/csv": "csv",
    "application/vnd.apache.arrow.stream": "arrow",
    "application/vnd.apache.arrow.file": "arrow",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
}
ROW_COLUMNS = ("ts", "open", "high", "low", "close", "volume", "trades", "vwap", "source")
_CSV_TIME = "%Y-%m-%dT%H:%M:%S%.fZ"


def negotiate(format_param: str | None, accept: str | None) -> Format:
    """``format=`` wins; otherwise the first known media type of ``Accept``; else JSON."""
    if format_param is not None:
        return format_param  # type: ignore[return-value]  # validated by the route
    for part in (accept or "").split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in _ACCEPT:
            return _ACCEPT[media]
    return "json"


def json_rows(table: pa.Table) -> bytes:
    """The bars of ``table`` as a JSON array of objects (ISO-8601 UTC times)."""
    if table.num_rows == 0:
        return b"[]"
    frame = pl.from_arrow(table.select(list(ROW_COLUMNS)))
    assert isinstance(frame, pl.DataFrame)
    return frame.write_json().encode()


def json_page(symbol: str, timeframe: str, table: pa.Table, next_cursor: str | None) -> bytes:
    """A JSON page: symbol, timeframe, count, next_cursor and the bars."""
    head = orjson.dumps(
        {
            "symbol": symbol,
            "timeframe": timeframe,
            "count": table.num_rows,
            "next_cursor": next_cursor,
        }
    )
    return head[:-1] + b',"bars":' + json_rows(table) + b"}"


def bars_csv(table: pa.Table, *, header: bool = True) -> bytes:
    """Bars as the one CSV format of MarketLake (the API's and ``marketlake bars -f csv``):
    unquoted text, times as ISO 8601 UTC with ``Z`` (``2024-03-04T14:30:00Z``, fractions
    only when there are any)."""
    return _csv(table, header=header)


def _csv(table: pa.Table, *, header: bool) -> bytes:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.write_csv(include_header=header, datetime_format=_CSV_TIME).encode()


class _Sink(io.RawIOBase):
    """A write-only file that hands out what was written since the last ``take``."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        chunk = bytes(data)  # type: ignore[call-overload]
        self._parts.append(chunk)
        self._pos += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def stream(fmt: Format, batches: Iterable[pa.Table]) -> Iterator[bytes]:
    """Serialise ``batches`` (canonical bar tables) as one ``fmt`` document, batch by batch."""
    if fmt == "csv":
        yield from _stream_csv(batches)
    elif fmt == "arrow":
        yield from _stream_arrow(batches)
    elif fmt == "parquet":
        yield from _stream_parquet(batches)
    else:
        raise ValueError(f"stream() serves csv, arrow and parquet, not {fmt}")


def _stream_csv(batches: Iterable[pa.Table]) -> Iterator[bytes]:
    header = True
    for batch in batches:
        yield _csv(batch, header=header)
        header = False
    if header:
        yield _csv(BAR_SCHEMA.empty_table(), header=True)


def _stream_arrow(batches: Iterable[pa.Table]) -> Iterator[bytes]:
    sink = _Sink()
    with pa.ipc.new_stream(sink, BAR_SCHEMA) as writer:
        yield sink.take()
        for batch in batches:
            writer.write_table(batch.cast(BAR_SCHEMA))
            yield sink.take()
    yield sink.take()


def _stream_parquet(batches: Iterable[pa.Table]) -> Iterator[bytes]:
    sink = _Sink()
    with pq.ParquetWriter(sink, BAR_SCHEMA, compression="zstd") as writer:
        for batch in batches:
            writer.write_table(batch.cast(BAR_SCHEMA))
            yield sink.take()
    yield sink.take()


def document(fmt: Format, table: pa.Table) -> bytes:
    """One table as a whole ``fmt`` document (for a page of a bulk format)."""
    return b"".join(stream(fmt, [table]))


def split(table: pa.Table, rows: int) -> Iterator[pa.Table]:
    """``table`` in zero-copy slices of at most ``rows`` rows."""
    for offset in range(0, table.num_rows, rows):
        yield table.slice(offset, rows)
