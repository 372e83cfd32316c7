"""Replay: stored bars sent through the same analytics and alert code as live data.

Each stored bar is one observation of a :class:`~marketlake.stream.pipeline.Pipeline`
whose analytics bucket is the replayed timeframe (so volatility is annualised
for that bar length). Replays are what-ifs: nothing is written and no alert is
published; the events come back to the caller (the terminal or an SSE stream),
paced at ``speed`` times real time (0: as fast as possible).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pyarrow as pa

from marketlake.config import Settings
from marketlake.errors import InputError, NotFoundError
from marketlake.schema import Timeframe, normalize_symbol
from marketlake.store.base import Store, check_range
from marketlake.stream.alerts import RuleSet, RuleSource
from marketlake.stream.analytics import AnalyticsConfig
from marketlake.stream.events import Batch
from marketlake.stream.pipeline import Pipeline
from marketlake.timeseries.times import iso_z


def replay_pipeline(settings: Settings, timeframe: Timeframe, rules: RuleSet) -> Pipeline:
    """A store-less pipeline whose buckets are the replayed bars."""
    if timeframe.is_calendar:
        raise InputError(
            "replay needs bars of a fixed length; 1mo bars have none", param="timeframe"
        )
    config = AnalyticsConfig(
        window=settings.analytics_window,
        bucket=str(timeframe),
        periods_per_year=settings.analytics_periods_per_year,
    )
    return Pipeline(config, rules)


MIN_SPEED = 0.01  # a 1m bar every 100 minutes; slower paces are a mistake, not a replay
MAX_SPEED = 1_000_000.0


async def replay(
    store: Store,
    settings: Settings,
    symbol: str,
    timeframe: str,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    speed: float = 0.0,
    rules: RuleSet | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Yield ``{"type": "bar", ...}`` (the bar and its metrics) and ``{"type": "alert", ...}``."""
    symbol = normalize_symbol(symbol)
    tf = Timeframe.parse(timeframe)
    check_range(start, end)
    if speed != 0 and not MIN_SPEED <= speed <= MAX_SPEED:
        raise InputError(
            f"speed {speed} must be 0 (as fast as possible) or between "
            f"{MIN_SPEED} and {MAX_SPEED:,.0f} times real time",
            param="speed",
        )
    if rules is None:
        rules = await asyncio.to_thread(RuleSource(settings.alert_rules_path(), store).load)
    pipeline = replay_pipeline(settings, tf, rules)
    delay = tf.seconds / speed if speed else 0.0
    found = False
    for table in await asyncio.to_thread(lambda: list(store.iter_bars(symbol, tf, start, end))):
        for i in range(table.num_rows):
            found = True
            for event in _step(pipeline, symbol, table.slice(i, 1)):
                yield event
            if delay:
                await asyncio.sleep(delay)
            elif i % 500 == 499:
                await asyncio.sleep(0)  # let other tasks (an SSE server) breathe
    if not found:
        raise NotFoundError(
            f"no {tf} bars of {symbol} stored in that range; load some with `marketlake ingest`"
        )


def _step(pipeline: Pipeline, symbol: str, bar: pa.Table) -> list[dict[str, Any]]:
    pipeline.process(Batch("bar", symbol, bar, "replay"))
    out = pipeline.take()
    row = bar.to_pylist()[0]
    values = {k: v for k, v in out.metrics[symbol].items() if k != "ts"}
    events: list[dict[str, Any]] = [
        {
            "type": "bar",
            "symbol": symbol,
            "ts": iso_z(row["ts"]),
            "bar": {k: row[k] for k in ("open", "high", "low", "close", "volume")},
            "metrics": values,
        }
    ]
    events += [{"type": "alert", **alert.as_json()} for alert in out.alerts]
    return events
