"""``GET /bars/{symbol}`` (pages and bulk downloads) and ``GET /bars/{symbol}/latest``.

JSON answers one page (``limit`` rows, default 1000) with a keyset
``next_cursor``. CSV, Arrow and Parquet answer one page when ``limit`` is given
(the cursor then comes in the ``X-Next-Cursor`` header) and otherwise stream the
whole range in batches, so memory stays flat however many rows go out.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from marketlake.api import formats
from marketlake.api.cache import Series
from marketlake.api.deps import (
    TIMEFRAME_PATTERN,
    ApiContext,
    ContextDep,
    ReadAccess,
    SymbolDep,
    in_thread,
)
from marketlake.api.errors import problem_responses
from marketlake.api.formats import Format
from marketlake.api.models import BarsPage, LatestBar
from marketlake.errors import InputError, NotFoundError
from marketlake.schema import Timeframe, parse_time
from marketlake.store.base import MAX_LIMIT, BarPage, check_range, decode_cursor

router = APIRouter(prefix="/bars", tags=["bars"])

JSON_DEFAULT_LIMIT = 1000
JSON_MAX_LIMIT = 50_000
BATCH_ROWS = 50_000
RENDERED_MAX_LIMIT = 1000  # JSON pages up to this size are kept rendered

TimeframeQuery = Annotated[
    str,
    Query(
        description="Bar size: 1m, 5m, 15m, 1h, 4h, 1d, 1w, 1mo or any N{m,h,d}",
        examples=["1m"],
        json_schema_extra={"pattern": TIMEFRAME_PATTERN},
    ),
]
StartQuery = Annotated[
    str | None,
    Query(
        description="First bar time, inclusive (ISO date or date-time; UTC when naive)",
        examples=["2024-03-04"],
    ),
]
EndQuery = Annotated[str | None, Query(description="End, exclusive", examples=["2024-03-05"])]

_BULK_CONTENT: dict[str, Any] = {
    "text/csv": {
        "schema": {"type": "string"},
        "example": "symbol,timeframe,ts,open,high,low,close,volume,trades,vwap,source\n"
        "AAPL,1m,2024-03-04T14:30:00Z,172.5,172.9,172.31,172.77,184210.0,"
        "1532,172.61,synthetic\n",
    },
    "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "format": "binary"}},
    "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
}


async def known_symbol(ctx: ApiContext, symbol: str) -> None:
    """404 unless ``symbol`` is a registered instrument."""
    store = ctx.store
    hit, symbols = ctx.cache.peek_memo(store, ("symbols",))
    if not hit:
        symbols = await in_thread(
            ctx.cache.memo,
            store,
            ("symbols",),
            lambda: frozenset(i.symbol for i in store.list_instruments()),
        )
    if symbol not in symbols:
        raise NotFoundError(
            f"unknown symbol {symbol}; list known ones with GET /api/v1/instruments"
        )


async def cached_series(ctx: ApiContext, symbol: str, timeframe: str) -> Series | None:
    """The symbol's whole series from the cache (loading it if it is short enough)."""
    store = ctx.store
    series = ctx.cache.peek(store, symbol, timeframe)
    ctx.metrics.cache.labels("hit" if series is not None else "miss").inc()
    if series is None and ctx.cache.enabled:
        with ctx.metrics.store_call("load_series"):
            series = await in_thread(ctx.cache.series, store, symbol, timeframe)
    return series


async def read_page(
    ctx: ApiContext,
    symbol: str,
    timeframe: str,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    cursor: str | None,
) -> BarPage:
    """One page of bars, from the cache when it holds the series, else from the store."""
    series = await cached_series(ctx, symbol, timeframe)
    if series is not None:
        return series.page(start, end, limit, cursor)
    with ctx.metrics.store_call("read_bars"):
        page: BarPage = await in_thread(
            ctx.store.read_bars, symbol, timeframe, start, end, limit, cursor
        )
    return page


def _times(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    begin = parse_time(start, param="start") if start is not None else None
    stop = parse_time(end, param="end") if end is not None else None
    check_range(begin, stop)
    return begin, stop


@router.get(
    "/{symbol:path}",
    response_model=BarsPage,
    summary="Bars of a symbol",
    responses={
        200: {
            "content": _BULK_CONTENT,
            "description": "A JSON page, or CSV / Arrow IPC stream / Parquet",
            "headers": {
                "X-Next-Cursor": {
                    "description": "Cursor of the next page (bulk formats with limit)",
                    "schema": {"type": "string"},
                }
            },
        },
        **problem_responses(404, 422),
    },
)
async def get_bars(
    symbol: SymbolDep,
    _: ReadAccess,
    ctx: ContextDep,
    timeframe: TimeframeQuery = "1m",
    start: StartQuery = None,
    end: EndQuery = None,
    limit: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_LIMIT,
            description=(
                f"Rows per page (JSON: default {JSON_DEFAULT_LIMIT}, at most {JSON_MAX_LIMIT}); "
                "bulk formats without limit stream the whole range"
            ),
        ),
    ] = None,
    cursor: Annotated[
        str | None, Query(description="next_cursor of the previous page", max_length=200)
    ] = None,
    format: Annotated[
        Format | None,
        Query(
            description="json, csv, arrow (IPC stream) or parquet; default from Accept, else json"
        ),
    ] = None,
    adjusted: Annotated[
        bool,
        Query(
            description=(
                "Adjust prices (and volumes, for splits) for the splits and dividends recorded "
                "after each bar; default: as traded"
            )
        ),
    ] = False,
    *,
    request: Request,
) -> Response:
    """Bars in ``[start, end)`` ordered by time, paged with a keyset cursor (no OFFSET)."""
    tf = str(Timeframe.parse(timeframe))
    begin, stop = _times(start, end)
    if cursor is not None:
        cursor_symbol = decode_cursor(cursor)[0]
        if cursor_symbol != symbol:
            raise InputError(
                f"cursor belongs to the bars of {cursor_symbol}, not {symbol}; pass the "
                f"next_cursor of a page of {symbol}, or start again without cursor",
                param="cursor",
            )
    fmt = formats.negotiate(format, request.headers.get("accept"))
    if fmt == "json" and limit is not None and limit > JSON_MAX_LIMIT:
        raise InputError(
            f"limit {limit} is above {JSON_MAX_LIMIT} for JSON; page with the "
            "cursor or ask for format=arrow, parquet or csv",
            param="limit",
        )
    await known_symbol(ctx, symbol)
    if adjusted:
        return await _adjusted(ctx, symbol, tf, begin, stop, limit, cursor, fmt)
    if fmt == "json":
        return Response(
            await _json_page(ctx, symbol, tf, begin, stop, limit or JSON_DEFAULT_LIMIT, cursor),
            media_type="application/json",
        )
    if limit is not None:
        page = await read_page(ctx, symbol, tf, begin, stop, limit, cursor)
        headers = {"X-Next-Cursor": page.next_cursor} if page.next_cursor else {}
        return Response(
            formats.document(fmt, page.table),
            media_type=formats.MEDIA_TYPES[fmt],
            headers=headers | _attachment(symbol, tf, fmt),
        )
    series = await cached_series(ctx, symbol, tf)
    batches = (
        formats.split(series.page(begin, stop, None, cursor).table, BATCH_ROWS)
        if series is not None
        else _store_batches(ctx, symbol, tf, begin, stop, cursor)
    )
    return StreamingResponse(
        formats.stream(fmt, batches),
        media_type=formats.MEDIA_TYPES[fmt],
        headers=_attachment(symbol, tf, fmt),
    )


async def _adjusted(
    ctx: ApiContext,
    symbol: str,
    tf: str,
    start: datetime | None,
    end: datetime | None,
    limit: int | None,
    cursor: str | None,
    fmt: Format,
) -> Response:
    """Adjusted bars: the same pages and streams as the traded ones, each adjusted."""
    from marketlake.timeseries.adjust import adjust_table

    timeframe = Timeframe.parse(tf)

    def adjust(table: Any) -> Any:
        return adjust_table(ctx.store, symbol, timeframe, table)

    if fmt == "json" or limit is not None:
        page = await read_page(ctx, symbol, tf, start, end, limit or JSON_DEFAULT_LIMIT, cursor)
        table = await in_thread(adjust, page.table)
        if fmt == "json":
            return Response(
                formats.json_page(symbol, tf, table, page.next_cursor),
                media_type="application/json",
            )
        headers = {"X-Next-Cursor": page.next_cursor} if page.next_cursor else {}
        return Response(
            formats.document(fmt, table),
            media_type=formats.MEDIA_TYPES[fmt],
            headers=headers | _attachment(symbol, tf, fmt),
        )
    batches = (adjust(t) for t in _store_batches(ctx, symbol, tf, start, end, cursor))
    return StreamingResponse(
        formats.stream(fmt, batches),
        media_type=formats.MEDIA_TYPES[fmt],
        headers=_attachment(symbol, tf, fmt),
    )


async def _json_page(
    ctx: ApiContext,
    symbol: str,
    tf: str,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    cursor: str | None,
) -> bytes:
    """A rendered JSON page; small pages are kept (until the next write) for repeat requests."""
    store = ctx.store
    key = ("json", symbol, tf, start, end, limit, cursor)
    hit, body = ctx.cache.peek_memo(store, key)
    if hit:
        return body  # type: ignore[no-any-return]
    stamp = ctx.cache.stamp(store, symbol, tf)
    page = await read_page(ctx, symbol, tf, start, end, limit, cursor)
    body = formats.json_page(symbol, tf, page.table, page.next_cursor)
    if limit <= RENDERED_MAX_LIMIT:
        ctx.cache.remember(
            store, key, body, generation=stamp, weight=len(body) // 100, series=(symbol, tf)
        )
    return body


def _store_batches(
    ctx: ApiContext,
    symbol: str,
    tf: str,
    start: datetime | None,
    end: datetime | None,
    cursor: str | None,
) -> Iterator[Any]:
    """The range in time windows of about ``BATCH_ROWS`` bars each, oldest first.

    Each window is a plain range read, which DuckDB and PostgreSQL answer from
    their time index or zone maps; a keyset page per batch would re-scan the
    symbol's rows for every batch.
    """
    store = ctx.store
    if cursor is not None:
        after_symbol, after_ts = decode_cursor(cursor)
        if after_symbol > symbol:
            return
        if after_symbol == symbol:
            after = after_ts + timedelta(microseconds=1)
            start = after if start is None else max(start, after)
    coverage = store.coverage(symbol, tf)
    if coverage.first is None or coverage.last is None:
        return
    lo = coverage.first if start is None else max(start, coverage.first)
    hi = coverage.last + timedelta(microseconds=1)
    hi = hi if end is None else min(end, hi)
    timeframe = Timeframe.parse(tf)
    step = timedelta(
        seconds=BATCH_ROWS * (31 * 86400 if timeframe.is_calendar else timeframe.seconds)
    )
    while lo < hi:
        upper = min(lo + step, hi)
        table = store.read_bars(symbol, tf, lo, upper).table
        if table.num_rows:
            yield table
        lo = upper


def _attachment(symbol: str, tf: str, fmt: str) -> dict[str, str]:
    suffix = {"csv": "csv", "arrow": "arrows", "parquet": "parquet"}.get(fmt, "json")
    safe = "".join(c if c.isalnum() else "_" for c in symbol)
    return {"Content-Disposition": f'attachment; filename="{safe}_{tf}.{suffix}"'}


@router.get(
    "/{symbol:path}/latest",
    response_model=LatestBar,
    summary="Newest bar",
    responses=problem_responses(404, 422),
)
async def latest_bar(
    symbol: SymbolDep, _: ReadAccess, ctx: ContextDep, timeframe: TimeframeQuery = "1m"
) -> LatestBar:
    """The newest stored bar of the symbol and timeframe."""
    tf = str(Timeframe.parse(timeframe))
    await known_symbol(ctx, symbol)
    series = await cached_series(ctx, symbol, tf)
    if series is not None:
        row = series.latest()
    else:
        with ctx.metrics.store_call("latest_bar"):
            row = await in_thread(ctx.store.latest_bar, symbol, tf)
    if row is None:
        raise NotFoundError(
            f"no {tf} bars stored for {symbol}; ingest some with POST /api/v1/ingest/run"
        )
    return LatestBar(**row)


# `{symbol:path}` reaches symbols with a slash (`BTC%2FUSD`); it would also take
# `AAPL/latest` as a symbol, so the `/latest` route is tried first.
router.routes.sort(key=lambda route: not getattr(route, "path", "").endswith("/latest"))
