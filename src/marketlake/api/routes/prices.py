"""Prices: ``GET /prices/{symbol}`` (newest closes) and ``GET /prices/{symbol}/latest``."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import orjson
import polars as pl
from fastapi import APIRouter, Query, Response

from marketlake.api.deps import ContextDep, ReadAccess, SymbolDep, in_thread
from marketlake.api.errors import problem_responses
from marketlake.api.models import LatestPrice, PriceSeries
from marketlake.api.routes.bars import TimeframeQuery, cached_series, known_symbol
from marketlake.errors import NotFoundError
from marketlake.schema import Timeframe, utcnow
from marketlake.store import Store

router = APIRouter(prefix="/prices", tags=["prices"])


@router.get(
    "/{symbol:path}",
    response_model=PriceSeries,
    summary="Newest closes",
    responses=problem_responses(404, 422),
)
async def prices(
    symbol: SymbolDep,
    _: ReadAccess,
    ctx: ContextDep,
    timeframe: TimeframeQuery = "1m",
    limit: Annotated[
        int, Query(ge=1, le=10_000, description="How many of the newest closes")
    ] = 100,
) -> Response:
    """The newest ``limit`` closes of the symbol, oldest first."""
    tf = str(Timeframe.parse(timeframe))
    await known_symbol(ctx, symbol)
    series = await cached_series(ctx, symbol, tf)
    if series is not None:
        table = series.table.slice(max(0, series.rows - limit), limit)
    else:
        with ctx.metrics.store_call("newest_bars"):
            table = await in_thread(ctx.store.newest_closes, symbol, tf, limit)
    frame = pl.from_arrow(table.select(["ts", "close"]).rename_columns(["ts", "price"]))
    assert isinstance(frame, pl.DataFrame)
    head = orjson.dumps({"symbol": symbol, "timeframe": tf})
    rows = frame.write_json().encode() if frame.height else b"[]"
    return Response(head[:-1] + b',"prices":' + rows + b"}", media_type="application/json")


@router.get(
    "/{symbol:path}/latest",
    response_model=LatestPrice,
    summary="Newest price",
    responses=problem_responses(404, 422),
)
async def latest_price(symbol: SymbolDep, _: ReadAccess, ctx: ContextDep) -> Response:
    """The last trade's price, or the close of the bar that ended last (finest on a tie)."""
    store = ctx.store
    hit, body = ctx.cache.peek_memo(store, ("latest_price", symbol))
    if not hit:
        await known_symbol(ctx, symbol)
        with ctx.metrics.store_call("latest_price"):
            body = await in_thread(
                ctx.cache.memo,
                store,
                ("latest_price", symbol),
                lambda: _latest_price(store, symbol),
            )
    if body is None:
        raise NotFoundError(f"no prices stored for {symbol}; ingest bars or stream trades first")
    return Response(body, media_type="application/json")


def _latest_price(store: Store, symbol: str) -> bytes | None:
    """The answer of ``latest_price`` as JSON bytes, or None without data.

    Each stored timeframe offers its newest bar. A final bar (ended by now) was current at
    its end; a forming one (a month that has not ended) is known only from its start, so a
    roll-up's forming bar never outranks the finer, final bars it was built from. The
    newest such time wins, the finer timeframe on a tie; a trade at or after it wins over
    any bar.
    """
    now = utcnow()
    best: dict[str, Any] | None = None
    for timeframe, newest in store.latest_bar_times(symbol).items():
        tf = Timeframe.parse(timeframe)
        ended = tf.next_start(newest) if tf.is_calendar else newest + timedelta(seconds=tf.seconds)
        final = ended <= now
        as_of = ended if final else newest
        rank = (as_of, -(tf.seconds if not tf.is_calendar else 31 * 86400))
        if best is None or rank > best["rank"]:
            best = {
                "rank": rank,
                "timeframe": str(tf),
                "open": newest,
                "ts": as_of,
                "final": final,
            }
    trade = store.latest_trade(symbol)
    if trade is not None and (best is None or trade["ts"] >= best["ts"]):
        out = {
            "symbol": symbol,
            "price": trade["price"],
            "ts": trade["ts"],
            "source": "trade",
            "timeframe": None,
            "bar_ts": None,
            "final": True,
        }
        return orjson.dumps(out)
    if best is None:
        return None
    close = store.close_at(symbol, best["timeframe"], best["open"])
    if close is None:  # deleted since it was found
        return None
    out = {
        "symbol": symbol,
        "price": close,
        "ts": best["ts"],
        "source": "bar",
        "timeframe": best["timeframe"],
        "bar_ts": best["open"],
        "final": best["final"],
    }
    return orjson.dumps(out)


# `{symbol:path}` reaches symbols with a slash (`BTC%2FUSD`); it would also take
# `AAPL/latest` as a symbol, so the `/latest` route is tried first.
router.routes.sort(key=lambda route: not getattr(route, "path", "").endswith("/latest"))
