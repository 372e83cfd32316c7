"""Server-sent events of live data and replays: ``GET /stream/live``, ``GET /replay/{symbol}``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import pyarrow as pa
from fastapi import APIRouter, Query, Response

from marketlake.api.deps import (
    BusDep,
    ReadAccess,
    SettingsDep,
    StoreDep,
    StreamSlotDep,
    SymbolDep,
)
from marketlake.api.errors import problem_responses
from marketlake.api.sse import SSE_DOC, Event, sse_response
from marketlake.errors import InputError
from marketlake.schema import normalize_symbol, parse_time
from marketlake.stream.events import RAW_TOPIC, Batch
from marketlake.stream.replay import replay

router = APIRouter(tags=["live"])


@router.get(
    "/stream/live",
    summary="Live trades and bars (server-sent events)",
    responses=SSE_DOC,
    response_class=Response,
)
async def live(
    _: ReadAccess,
    slot: StreamSlotDep,
    bus: BusDep,
    symbols: Annotated[
        str | None,
        Query(
            description="Comma-separated symbols (default: all)",
            examples=["BTCUSDT,ETHUSDT"],
            max_length=2000,
        ),
    ] = None,
) -> Response:
    """``event: trades`` (a batch of trades) and ``event: bar`` (kline updates and final
    bars, ``final`` telling which) as the feed publishes them."""
    wanted = {normalize_symbol(s) for s in symbols.split(",") if s.strip()} if symbols else None

    async def events() -> AsyncIterator[Event]:
        async for message in bus.tail(RAW_TOPIC):
            batch = message.payload
            if isinstance(batch, Batch) and (wanted is None or batch.symbol in wanted):
                yield message.id, *_live_event(batch)

    return sse_response(events(), slot)


def _live_event(batch: Batch) -> tuple[str, dict[str, Any]]:
    rows = _rows(batch.table)
    if batch.kind == "trade":
        return "trades", {
            "symbol": batch.symbol,
            "trades": [
                {k: r[k] for k in ("ts", "price", "size", "side", "trade_id")} for r in rows
            ],
        }
    return "bar", {
        "symbol": batch.symbol,
        "final": batch.final,
        "role": batch.role,
        "bars": [
            {k: r[k] for k in ("ts", "open", "high", "low", "close", "volume", "trades", "vwap")}
            for r in rows
        ],
    }


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.to_pylist()
    for row in rows:
        row["ts"] = row["ts"].isoformat().replace("+00:00", "Z")
    return rows


@router.get(
    "/replay/{symbol:path}",
    summary="Replay stored bars (server-sent events)",
    responses={**SSE_DOC, **problem_responses(404, 422)},
    response_class=Response,
)
async def replay_bars(
    symbol: SymbolDep,
    _: ReadAccess,
    slot: StreamSlotDep,
    store: StoreDep,
    settings: SettingsDep,
    timeframe: Annotated[str, Query(examples=["1m"], max_length=10)] = "1m",
    start: Annotated[str | None, Query(description="From (inclusive), ISO time")] = None,
    end: Annotated[str | None, Query(description="To (exclusive), ISO time")] = None,
    speed: Annotated[
        float,
        Query(
            ge=0,
            le=1_000_000,
            description=(
                "Times real time, 0.01 to 1,000,000 (60: a 1m bar per second); "
                "0: as fast as possible"
            ),
        ),
    ] = 0.0,
) -> Response:
    """Stored bars through the live analytics and alert rules: ``event: bar`` (the bar and
    its metrics) and ``event: alert``. Nothing is stored or published."""
    begin = parse_time(start, param="start") if start else None
    stop = parse_time(end, param="end") if end else None
    if begin is not None and stop is not None and begin >= stop:
        raise InputError("start must be before end (ranges are half-open)", param="start")
    iterator = aiter(replay(store, settings, symbol, timeframe, begin, stop, speed=speed))
    first = await anext(iterator)  # errors (no bars, bad timeframe) become problems here

    async def events() -> AsyncIterator[Event]:
        count = 0
        event: dict[str, Any] | None = first
        while event is not None:
            yield str(count), event.pop("type"), event
            count += 1
            event = await anext(iterator, None)
        yield str(count), "end", {"symbol": normalize_symbol(symbol), "events": count}

    return sse_response(events(), slot)
