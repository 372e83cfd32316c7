"""Alerts: ``GET /alerts``, ``GET /alerts/stream`` (SSE) and ``GET/POST/DELETE /alerts/rules``.

The stream sends every new alert as it is published, with the bus entry id as
the event id: a client that reconnects with ``Last-Event-ID`` gets what it
missed (as long as the bus still holds it), then the live ones.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Response, status
from pydantic import BaseModel, Field

from marketlake.api.deps import (
    BusDep,
    ReadAccess,
    SettingsDep,
    StoreDep,
    StreamSlotDep,
    WriteAccess,
    in_thread,
)
from marketlake.api.errors import problem_responses
from marketlake.api.sse import SSE_DOC, Event, sse_response
from marketlake.errors import InputError
from marketlake.schema import normalize_symbol, parse_time
from marketlake.store.base import check_range
from marketlake.stream import alerts as rules_api
from marketlake.stream.alerts import Rule
from marketlake.stream.bus import Bus, MemoryBus
from marketlake.stream.events import ALERTS_TOPIC

router = APIRouter(tags=["alerts"])
_REDIS_ID = re.compile(r"^\d+-\d+$")


class AlertOut(BaseModel):
    """One firing of an alert rule."""

    id: str = Field(examples=["9f3c1e0a2b7d4c5e8f1a2b3c"])
    rule_id: str = Field(examples=["btc-above-70k"])
    symbol: str = Field(examples=["BTCUSDT"])
    ts: datetime = Field(description="Time of the event that triggered it")
    kind: str = Field(examples=["price_above"])
    value: float | None = Field(examples=[70012.5], description="The value that triggered it")
    message: str
    seq: int = Field(description="The firing's number for its rule and symbol")


@router.get("/alerts", response_model=list[AlertOut], summary="Stored alerts")
async def list_alerts(
    _: ReadAccess,
    store: StoreDep,
    symbol: Annotated[str | None, Query(max_length=64, examples=["BTCUSDT"])] = None,
    rule_id: Annotated[str | None, Query(max_length=64)] = None,
    start: Annotated[str | None, Query(description="From (inclusive), ISO time")] = None,
    end: Annotated[str | None, Query(description="To (exclusive), ISO time")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AlertOut]:
    """The newest alerts first."""
    begin = parse_time(start, param="start") if start else None
    stop = parse_time(end, param="end") if end else None
    check_range(begin, stop)
    rows = await in_thread(
        lambda: store.read_alerts(
            symbol=symbol or None, rule_id=rule_id or None, start=begin, end=stop, limit=limit
        )
    )
    return [AlertOut(**row) for row in rows]


@router.get(
    "/alerts/stream",
    summary="Live alerts (server-sent events)",
    responses=SSE_DOC,
    response_class=Response,
)
async def stream_alerts(
    _: ReadAccess,
    slot: StreamSlotDep,
    bus: BusDep,
    symbol: Annotated[str | None, Query(max_length=64, description="Only this symbol")] = None,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="Resume after this event id")
    ] = None,
) -> Response:
    """``event: alert`` per new alert; ``id`` is resumable with ``Last-Event-ID``."""
    after = _check_event_id(bus, last_event_id)
    wanted = normalize_symbol(symbol) if symbol else None

    async def events() -> AsyncIterator[Event]:
        async for message in bus.tail(ALERTS_TOPIC, after):
            if wanted is None or message.payload.get("symbol") == wanted:
                yield message.id, "alert", message.payload

    return sse_response(events(), slot)


def _check_event_id(bus: Bus, event_id: str | None) -> str | None:
    if not event_id:
        return None
    pattern = re.compile(r"^\d+$") if isinstance(bus, MemoryBus) else _REDIS_ID
    if not pattern.match(event_id.strip()):
        raise InputError(
            f"Last-Event-ID {event_id!r} is not an id this stream sent; reconnect "
            "without it to start from now",
            param="Last-Event-ID",
        )
    return event_id.strip()


@router.get("/alerts/rules", response_model=list[dict[str, Any]], summary="Alert rules")
async def list_rules(_: ReadAccess, store: StoreDep, settings: SettingsDep) -> list[dict[str, Any]]:
    """Every rule in force; ``source`` is ``file`` (config/alert_rules.yml) or ``api``."""
    rules: list[dict[str, Any]] = await in_thread(
        rules_api.list_rules, settings.alert_rules_path(), store
    )
    return rules


@router.post(
    "/alerts/rules",
    status_code=status.HTTP_201_CREATED,
    response_model=dict[str, Any],
    summary="Add an alert rule",
    responses=problem_responses(409, 422),
)
async def add_rule(
    rule: Annotated[Rule, Body()], _: WriteAccess, store: StoreDep, settings: SettingsDep
) -> dict[str, Any]:
    """Store a rule; running workers pick it up within ``MARKETLAKE_ALERTS_RELOAD_S``."""
    added = await in_thread(
        rules_api.add_rule, store, rule.model_dump(), settings.alert_rules_path()
    )
    return {**added.model_dump(), "source": "api"}


@router.delete(
    "/alerts/rules/{rule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an alert rule",
    responses=problem_responses(404),
)
async def delete_rule(rule_id: str, _: WriteAccess, store: StoreDep) -> Response:
    """Remove a rule added through the API (rules of the file are edited in the file)."""
    await in_thread(rules_api.delete_rule, store, rule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
