"""A stalled store: a real PostgreSQL lock held 5 s by another connection.

A real worker (in this process, on its own asyncio task) consumes the real Redis
bus and writes to the real PostgreSQL store while another connection holds
``LOCK TABLE alerts, trades, bars, metrics IN ACCESS EXCLUSIVE MODE``:

* the alerts of the events published during the stall reach a subscriber of the
  ``alerts`` topic before the lock is released (an ordering, not a timing,
  assertion), and no write finished meanwhile;
* with a small ``worker_write_backlog_events`` the worker stops reading the bus
  when the backlog is full: the entries wait in Redis, not in memory;
* after the stall everything is stored exactly once (counted by key).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from marketlake.config import Settings
from marketlake.store import Store
from marketlake.store.pgconn import parse_uri
from marketlake.stream.alerts import RuleSet, parse_rule
from marketlake.stream.analytics import AnalyticsConfig
from marketlake.stream.bus.redis import RedisBus
from marketlake.stream.events import ALERTS_TOPIC, RAW_TOPIC
from marketlake.stream.pipeline import Pipeline
from marketlake.stream.worker import GROUP, Worker
from tests.conftest import PG_SERVER, REDIS_URL
from tests.stream.helpers import batches_of, make_trades, reference_bars, stored_bars

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

SYMBOLS = ["S0USDT", "S1USDT"]
PER_SYMBOL = 1500
WARM = 300  # trades per symbol before the stall (the worker meets the symbols)
BATCH = 100
STALL_S = 5.0
RULE = {"id": "cross", "kind": "price_cross", "level": 100.0}
TABLES = ("alerts", "trades", "bars", "metrics")


def _trades() -> dict[str, pa.Table]:
    return {
        s: make_trades(s, PER_SYMBOL, seed=i + 3, first_id=i * 100_000)
        for i, s in enumerate(SYMBOLS)
    }


def _alert_ids(tables: list[pa.Table]) -> set[str]:
    """The alerts the live pipeline raises on these trades (ids are deterministic)."""
    pipeline = Pipeline(AnalyticsConfig(), RuleSet((parse_rule(RULE),)))
    for table in tables:
        for batch in batches_of(table, BATCH):
            pipeline.process(batch)
    return {a.id for a in pipeline.take().alerts}


@contextlib.contextmanager
def _locked(store: Store) -> Iterator[None]:
    """Every table the worker writes, locked by another connection until the block ends."""
    import psycopg

    schema = parse_uri(store.uri).schema
    conn = psycopg.connect(PG_SERVER, connect_timeout=5)
    try:
        names = ", ".join(f'"{schema}".{t}' for t in TABLES)
        conn.execute(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        conn.rollback()
        conn.close()


@dataclass
class Harness:
    """A worker, a publisher and an alert subscriber on one Redis prefix."""

    worker: Worker
    publisher: RedisBus
    subscriber: RedisBus
    received: list[str] = field(default_factory=list)
    published: int = 0

    async def publish(self, tables: list[pa.Table]) -> None:
        batches = [b for t in tables for b in batches_of(t, BATCH)]
        await self.publisher.publish(batches)
        self.published += len(batches)

    async def follow(self) -> None:
        async for message in self.subscriber.tail(ALERTS_TOPIC, after="0"):
            assert isinstance(message.payload, dict)
            self.received.append(str(message.payload["id"]))

    async def lag(self) -> int:
        """Entries of the raw topic not yet delivered to the worker."""
        groups = await self.publisher.redis.xinfo_groups(self.publisher.key(RAW_TOPIC, 0))
        return sum(int(g["lag"] or 0) for g in groups if g["name"].decode() == GROUP)


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def _run(
    store: Store,
    prefix: str,
    config_dir: Path,
    backlog: int,
    body: Callable[[Harness], Awaitable[None]],
) -> None:
    (config_dir / "alert_rules.yml").write_text(f"rules:\n  - {RULE}\n".replace("'", ""))
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        store=store.uri,
        bus=REDIS_URL,
        bus_prefix=prefix,
        bus_shards=1,
        worker_fetch_entries=2,
        worker_write_backlog_events=backlog,
        alerts_reload_s=3600,
        config_dir=config_dir,
    )

    async def main() -> None:
        bus = RedisBus(REDIS_URL, prefix=prefix, shards=1)
        worker = Worker(settings, store, bus, name="stalled", block_ms=100)
        harness = Harness(
            worker, RedisBus(REDIS_URL, prefix=prefix, shards=1), RedisBus(REDIS_URL, prefix=prefix)
        )
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        following = asyncio.create_task(harness.follow())
        try:
            await _until(lambda: worker.writer is not None, 30, "the worker to start")
            await body(harness)
            await _until(
                lambda: worker.stats.entries == harness.published,
                120,
                "every entry to be stored and acknowledged",
            )
        finally:
            stop.set()
            await asyncio.wait_for(running, 120)
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
            for b in (bus, harness.publisher, harness.subscriber):
                await b.close()

    asyncio.run(asyncio.wait_for(main(), 300))


def _check_stored_once(store: Store, trades: dict[str, pa.Table]) -> None:
    everything = pa.concat_tables(trades.values())
    doubled = store.query(
        "SELECT source, symbol, trade_id FROM trades GROUP BY source, symbol, trade_id "
        "HAVING count(*) > 1"
    )
    assert doubled.num_rows == 0
    counts = {
        r["symbol"]: r["n"]
        for r in store.query("SELECT symbol, count(*) AS n FROM trades GROUP BY symbol").to_pylist()
    }
    assert counts == dict.fromkeys(SYMBOLS, PER_SYMBOL)
    doubled = store.query(
        "SELECT symbol, timeframe, ts FROM bars GROUP BY symbol, timeframe, ts HAVING count(*) > 1"
    )
    assert doubled.num_rows == 0
    pd.testing.assert_frame_equal(
        stored_bars(store.read_bars(SYMBOLS, "1m").table),
        reference_bars(everything),
        check_dtype=False,
        check_names=False,
        check_index_type=False,
        rtol=1e-12,
    )
    alerts = [a["id"] for a in store.select_rows("alerts")]
    assert len(alerts) == len(set(alerts))
    assert set(alerts) == _alert_ids(list(trades.values()))
    prices = {r["symbol"]: r["value"] for r in store.select_rows("metrics", {"name": "price"})}
    assert prices == {s: t.column("price")[-1].as_py() for s, t in trades.items()}


def test_alerts_reach_subscribers_while_the_store_is_locked_and_nothing_is_lost(
    pg: Store, redis_prefix: str, tmp_path: Path
) -> None:
    trades = _trades()
    warm = [t.slice(0, WARM) for t in trades.values()]
    rest = [t.slice(WARM) for t in trades.values()]
    during = _alert_ids(list(trades.values())) - _alert_ids(warm)
    assert during, "the trades after the warm-up must raise alerts"
    seen: dict[str, Any] = {}

    async def body(h: Harness) -> None:
        await h.publish(warm)
        await _until(lambda: h.worker.stats.entries == h.published, 120, "the warm-up")
        writes = h.worker.stats.writes
        with _locked(pg):
            await h.publish(rest)
            loop = asyncio.get_running_loop()
            release = loop.time() + STALL_S
            while loop.time() < release:
                await asyncio.sleep(0.05)
            # Still inside the lock: what arrived so far arrived during the stall.
            seen["alerts"] = set(h.received)
            seen["writes"] = h.worker.stats.writes - writes
            seen["processed"] = h.worker.stats.events
        seen["released"] = True

    _run(pg, redis_prefix, tmp_path, 200_000, body)
    assert seen["writes"] == 0, "a write finished while its tables were locked"
    assert seen["processed"] == PER_SYMBOL * len(SYMBOLS)  # all read and processed meanwhile
    missing = during - seen["alerts"]
    assert not missing, f"{len(missing)} alerts only arrived after the lock was released"
    _check_stored_once(pg, trades)


def test_a_full_write_backlog_stops_reading_until_the_store_recovers(
    pg: Store, redis_prefix: str, tmp_path: Path
) -> None:
    backlog = 300  # events; a round is at most 2 entries of 100 events
    trades = _trades()
    warm = [t.slice(0, WARM) for t in trades.values()]
    rest = [t.slice(WARM) for t in trades.values()]
    seen: dict[str, int] = {}

    async def body(h: Harness) -> None:
        await h.publish(warm)
        await _until(lambda: h.worker.stats.entries == h.published, 120, "the warm-up")
        before = h.worker.stats.events
        with _locked(pg):
            await h.publish(rest)
            await _until(
                lambda: h.worker.stats.backlog_events >= backlog, 60, "the backlog to fill up"
            )
            processed, lag = h.worker.stats.events, await h.lag()
            await asyncio.sleep(1.0)  # room to misbehave: a reader would go on reading
            seen["held"] = processed - before
            seen["held_later"] = h.worker.stats.events - before
            seen["lag"], seen["lag_later"] = lag, await h.lag()
            seen["backlog"] = h.worker.stats.backlog_events

    _run(pg, redis_prefix, tmp_path, backlog, body)
    round_events = 2 * BATCH
    # Queued below the limit plus the round that crossed it, plus one round waiting to be put.
    assert seen["held"] <= backlog + 2 * round_events
    assert seen["held_later"] == seen["held"], "the worker kept processing with a full backlog"
    assert seen["backlog"] < backlog + round_events
    assert seen["lag"] > 0
    assert seen["lag_later"] == seen["lag"], "the worker kept reading with a full backlog"
    _check_stored_once(pg, trades)
