"""Frames for the Python client and other bulk readers, as Arrow IPC streams.

- ``GET /bars?symbols=AAPL,MSFT&timeframe=1d``: the bars of several symbols in one
  stream (a ``symbol`` column, ordered by symbol then time), one request however many
  symbols;
- ``GET /trades/{symbol}``: stored trades;
- ``GET /coverage``: per symbol and timeframe, the number of bars, first and last;
- ``GET /actions/{symbol}``: stored splits and dividends.

The tables come from the functions below, which the client's local transport calls
too, so both transports answer with the same columns, types and messages. All need
the read scope, as the other read routes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import pyarrow as pa
from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from marketlake.api import formats
from marketlake.api.deps import ContextDep, ReadAccess, StoreDep, SymbolDep, in_thread
from marketlake.api.errors import problem_responses
from marketlake.errors import InputError
from marketlake.schema import TRADE_SCHEMA, Timeframe, normalize_symbol, parse_time
from marketlake.store import Store
from marketlake.store.base import check_range

router = APIRouter(tags=["datasets"])

ARROW = "application/vnd.apache.arrow.stream"
MAX_SYMBOLS = 500
BATCH_ROWS = 50_000
COVERAGE_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string()),
        pa.field("timeframe", pa.string()),
        pa.field("bars", pa.int64()),
        pa.field("first", pa.timestamp("us", tz="UTC")),
        pa.field("last", pa.timestamp("us", tz="UTC")),
    ]
)
_ARROW_ONLY: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {ARROW: {"schema": {"type": "string", "format": "binary"}}},
        "description": "An Arrow IPC stream",
    }
}


# -- the tables (shared with the client's local transport) -----------------------------


def symbol_list(text: str | list[str]) -> list[str]:
    """``"AAPL,msft"`` (or a list) as distinct normalised symbols, sorted."""
    items = text.split(",") if isinstance(text, str) else text
    names = sorted({normalize_symbol(s) for s in items if s.strip()})
    if not names:
        raise InputError("give at least one symbol, e.g. symbols=AAPL,MSFT", param="symbols")
    if len(names) > MAX_SYMBOLS:
        raise InputError(
            f"{len(names)} symbols; at most {MAX_SYMBOLS} per request", param="symbols"
        )
    return names


def time_range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    begin = parse_time(start, param="start") if start else None
    stop = parse_time(end, param="end") if end else None
    check_range(begin, stop)
    return begin, stop


def check_bars_request(
    store: Store, symbols: list[str], timeframe: str, start: str | None, end: str | None
) -> tuple[str, datetime | None, datetime | None]:
    """The checked timeframe and range; an unknown symbol is ``NotFoundError`` (as in the CLI)."""
    tf = str(Timeframe.parse(timeframe))
    begin, stop = time_range(start, end)
    for symbol in symbols:
        store.instrument(symbol)
    return tf, begin, stop


def bar_batches(
    store: Store,
    symbols: list[str],
    tf: str,
    start: datetime | None,
    end: datetime | None,
    adjusted: bool,
) -> Iterator[pa.Table]:
    """The bars of ``symbols`` (checked), symbol by symbol, in batches."""
    timeframe = Timeframe.parse(tf)
    for symbol in symbols:
        for table in store.iter_bars(symbol, tf, start, end, batch_rows=BATCH_ROWS):
            if adjusted:
                from marketlake.timeseries.adjust import adjust_table

                table = adjust_table(store, symbol, timeframe, table)
            yield table


def bars_table(
    store: Store,
    symbols: list[str],
    timeframe: str,
    start: str | None,
    end: str | None,
    adjusted: bool,
) -> pa.Table:
    """The bars of several symbols as one table (the local transport's ``GET /bars``)."""
    from marketlake.schema import BAR_SCHEMA

    tf, begin, stop = check_bars_request(store, symbols, timeframe, start, end)
    batches = [b.cast(BAR_SCHEMA) for b in bar_batches(store, symbols, tf, begin, stop, adjusted)]
    return pa.concat_tables(batches) if batches else BAR_SCHEMA.empty_table()


def trades_table(store: Store, symbol: str, start: str | None, end: str | None) -> pa.Table:
    """Stored trades of ``symbol`` in ``[start, end)``, by time."""
    symbol = normalize_symbol(symbol)
    begin, stop = time_range(start, end)
    store.instrument(symbol)
    table: pa.Table = store.read_trades(symbol, begin, stop)
    return table.select(TRADE_SCHEMA.names).cast(TRADE_SCHEMA)


def coverage_table(store: Store, symbols: list[str] | None, timeframe: str | None) -> pa.Table:
    """Per stored (symbol, timeframe): bars, first and last (as `marketlake instruments show`)."""
    tf = str(Timeframe.parse(timeframe)) if timeframe else None
    wanted = set(symbols) if symbols else None
    if wanted:
        for symbol in sorted(wanted):
            store.instrument(symbol)
    rows = [
        {k: row[k] for k in COVERAGE_SCHEMA.names}
        for row in store.bar_summary()
        if (wanted is None or row["symbol"] in wanted) and (tf is None or row["timeframe"] == tf)
    ]
    return pa.Table.from_pylist(rows, schema=COVERAGE_SCHEMA)


def actions_table(store: Store, symbol: str, start: str | None, end: str | None) -> pa.Table:
    """Stored splits and dividends of ``symbol`` (as `marketlake actions`)."""
    symbol = normalize_symbol(symbol)
    store.instrument(symbol)
    begin, stop = time_range(start, end)
    return store.read_actions(symbol, begin, stop)


def arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _arrow(table: pa.Table) -> Response:
    return Response(arrow_bytes(table), media_type=ARROW)


# -- the routes -------------------------------------------------------------------------

StartQuery = Annotated[str | None, Query(description="From (inclusive), ISO, UTC when naive")]
EndQuery = Annotated[str | None, Query(description="To (exclusive)")]


@router.get(
    "/bars",
    summary="Bars of several symbols, one Arrow stream",
    response_class=StreamingResponse,
    responses={**_ARROW_ONLY, **problem_responses(404, 422)},
)
async def many_bars(
    _: ReadAccess,
    ctx: ContextDep,
    symbols: Annotated[
        str, Query(description="Comma-separated symbols", examples=["AAPL,MSFT"], max_length=8000)
    ],
    timeframe: Annotated[str, Query(description="Bar size", examples=["1d"])] = "1m",
    start: StartQuery = None,
    end: EndQuery = None,
    adjusted: Annotated[bool, Query(description="Split- and dividend-adjusted")] = False,
) -> StreamingResponse:
    """The bars of every symbol as one Arrow IPC stream with a ``symbol`` column, ordered
    by symbol then time; streamed in batches, so memory stays flat."""
    names = symbol_list(symbols)
    store = ctx.store
    tf, begin, stop = await in_thread(check_bars_request, store, names, timeframe, start, end)
    return StreamingResponse(
        formats.stream("arrow", bar_batches(store, names, tf, begin, stop, adjusted)),
        media_type=ARROW,
    )


@router.get(
    "/trades/{symbol:path}",
    summary="Stored trades",
    response_class=Response,
    responses={**_ARROW_ONLY, **problem_responses(404, 422)},
)
async def trades(
    symbol: SymbolDep,
    _: ReadAccess,
    store: StoreDep,
    start: StartQuery = None,
    end: EndQuery = None,
) -> Response:
    """The trades of ``symbol`` in ``[start, end)`` as an Arrow IPC stream."""
    return _arrow(await in_thread(trades_table, store, symbol, start, end))


@router.get(
    "/coverage",
    summary="Stored bars per symbol and timeframe",
    response_class=Response,
    responses={**_ARROW_ONLY, **problem_responses(404, 422)},
)
async def coverage(
    _: ReadAccess,
    store: StoreDep,
    symbols: Annotated[
        str | None, Query(description="Comma-separated symbols (default all)", max_length=8000)
    ] = None,
    timeframe: Annotated[str | None, Query(description="Only this timeframe")] = None,
) -> Response:
    """Bars, first and last time per (symbol, timeframe), as an Arrow IPC stream."""
    names = symbol_list(symbols) if symbols else None
    return _arrow(await in_thread(coverage_table, store, names, timeframe))


@router.get(
    "/actions/{symbol:path}",
    summary="Corporate actions",
    response_class=Response,
    responses={**_ARROW_ONLY, **problem_responses(404, 422)},
)
async def actions(
    symbol: SymbolDep,
    _: ReadAccess,
    store: StoreDep,
    start: StartQuery = None,
    end: EndQuery = None,
) -> Response:
    """Stored splits (ratio) and cash dividends of ``symbol``, as an Arrow IPC stream."""
    return _arrow(await in_thread(actions_table, store, symbol, start, end))
