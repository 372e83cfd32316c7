"""Dropped Redis connections: workers, the feed and SSE readers reconnect and resume.

Real worker processes on the real Redis and PostgreSQL: while they consume, every
connection they hold is killed with ``CLIENT KILL`` (found by the client name each
bus connection carries). They must log one line, reconnect with backoff, resume
their consumer group and, in the end, have stored every event exactly once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from marketlake.config import Settings
from marketlake.store import Store, open_store
from marketlake.stream.binance import BinanceFeed
from marketlake.stream.bus.redis import RedisBus, _payload
from marketlake.stream.events import ALERTS_TOPIC
from tests.conftest import REDIS_URL
from tests.stream.helpers import Connection, FlakyProxy, ScriptedServer, batches_of, recording
from tests.stream.test_workers import (
    RULE,
    Bus,
    _check_store,
    _env,
    _reap,
    _start,
    _trades,
    _wait,
)


def kill_clients(prefix: str) -> int:
    """``CLIENT KILL`` every connection whose client name starts with ``prefix``."""
    admin = redis.Redis.from_url(REDIS_URL)
    try:
        ids = [c["id"] for c in admin.client_list() if str(c.get("name", "")).startswith(prefix)]
        for client_id in ids:
            admin.client_kill_filter(_id=client_id)
        return len(ids)
    finally:
        admin.close()


def _two_workers_through(
    tmp_path: Path, prefix: str, pg: Store, fault: Callable[[], int], bus_url: str = REDIS_URL
) -> list[str]:
    """Two worker processes consume 12,000 trades; ``fault`` strikes after each third,
    while entries are open. Returns the workers' logs; checks the store."""
    (tmp_path / "alert_rules.yml").write_text(RULE)
    env = {
        **_env(pg.uri, prefix, tmp_path),
        "MARKETLAKE_BUS": bus_url,
        "MARKETLAKE_LOG_LEVEL": "INFO",
    }
    bus = Bus(prefix)
    trades = _trades()
    batches = [b for t in trades.values() for b in batches_of(t, 100)]
    workers = [_start("one", env), _start("two", env)]
    thirds = [batches[i * len(batches) // 3 : (i + 1) * len(batches) // 3] for i in range(3)]
    faults = 0
    try:
        _wait(lambda: bus.lease_holders() == {"one", "two"}, 240, "two workers", workers[0])
        for part in thirds:
            bus.publish(part)
            _wait(
                lambda: bus.progress()[0] < len(part),  # noqa: B023 - used at once
                120,
                "the workers to consume",
                workers[1],
            )
            faults += fault()  # mid-stream: entries are still open
        _wait(
            lambda: bus.progress()[:2] == (0, len(batches)),
            300,
            "every entry to be acknowledged after the faults",
            workers[0],
        )
        assert all(w.poll() is None for w in workers), "a worker exited"
    finally:
        for process in workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        if sys.exc_info()[0] is not None:
            for process in workers:
                _reap(process)
    assert faults >= 3
    logs = []
    for process in workers:
        out, err = process.communicate(timeout=30)
        log = err.decode()
        assert process.returncode == 0, log
        assert "Traceback" not in log, log
        assert b'"events"' in out
        logs.append(log)
    store = open_store(pg.uri)
    try:
        _check_store(store, trades)
    finally:
        store.close()
    return logs


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
def test_workers_survive_client_kill_and_store_every_event_once(
    tmp_path: Path, redis_prefix: str, pg: Store
) -> None:
    _two_workers_through(tmp_path, redis_prefix, pg, lambda: kill_clients(redis_prefix))


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
def test_workers_wait_out_a_redis_outage_and_store_every_event_once(
    tmp_path: Path, redis_prefix: str, pg: Store
) -> None:
    """Redis unreachable for 2 s (a proxy drops every connection and refuses new ones),
    three times: longer than the client's own retries and than the lease time."""
    proxy = FlakyProxy("127.0.0.1", 6379)
    try:

        def outage() -> int:
            proxy.cut(2.0)
            return 1

        logs = _two_workers_through(
            tmp_path, redis_prefix, pg, outage, f"redis://127.0.0.1:{proxy.port}/0"
        )
    finally:
        proxy.close()
    for log in logs:
        assert "reconnecting" in log, log
        assert log.count("joined group") >= 2, log


@pytest.mark.redis
def test_sse_tail_resumes_after_its_connection_is_killed(redis_prefix: str) -> None:
    """A reader of the alerts topic loses its connection and misses no entry."""

    async def go() -> list[int]:
        reader = RedisBus(REDIS_URL, prefix=redis_prefix, client_name=f"{redis_prefix}sse")
        writer = RedisBus(REDIS_URL, prefix=redis_prefix)
        seen: list[int] = []
        try:
            await writer.publish_event(ALERTS_TOPIC, {"n": -1})
            tail = reader.tail(ALERTS_TOPIC)
            first = asyncio.ensure_future(anext(tail))
            await asyncio.sleep(0.3)  # the reader is blocked in XREAD
            await writer.publish_event(ALERTS_TOPIC, {"n": 0})
            seen.append((await first).payload["n"])
            for n in range(1, 30):
                if n % 10 == 0:
                    assert kill_clients(f"{redis_prefix}sse") >= 1
                    await writer.publish_event(ALERTS_TOPIC, {"n": n})
                else:
                    await writer.publish_event(ALERTS_TOPIC, {"n": n})
                message = await asyncio.wait_for(anext(tail), 20)
                seen.append(message.payload["n"])
            await tail.aclose()
        finally:
            await reader.close()
            await writer.close()
        return seen

    assert asyncio.run(go()) == list(range(30))


@pytest.mark.redis
def test_feed_keeps_publishing_through_client_kills(tmp_path: Path, redis_prefix: str) -> None:
    """The Binance feed (a local server replaying the recording) publishes into Redis while
    its connections are killed: every recorded trade arrives."""
    lines = recording()
    expected = {
        str(json.loads(x)["data"]["t"]) for x in lines if json.loads(x)["data"].get("e") == "trade"
    }

    async def go() -> tuple[set[str], int]:
        bus = RedisBus(REDIS_URL, prefix=redis_prefix, shards=2, client_name=f"{redis_prefix}feed")
        async with ScriptedServer([Connection(lines, "silent", pause_s=0.002)]) as server:
            settings = Settings(
                binance_ws_url=server.url,
                stream_linger_ms=5,
                stream_stall_s=30,
                config_dir=tmp_path,
            )
            feed = BinanceFeed(
                settings, ["BTCUSDT", "ETHUSDT"], bus.publish, connect=server.connect
            )
            stop = asyncio.Event()
            run = asyncio.create_task(feed.run(stop))
            kills = 0
            while feed.state.messages < len(lines):
                await asyncio.sleep(0.3)
                kills += kill_clients(f"{redis_prefix}feed")
            for _ in range(200):
                if not feed.state.unpublished:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await run
        await bus.close()
        reader = RedisBus(REDIS_URL, prefix=redis_prefix, shards=2)
        ids: set[str] = set()
        for key in reader.raw_keys():
            for _, fields in await reader.redis.xrange(key):
                batch = _payload(fields)
                if batch.kind == "trade":
                    ids.update(batch.table.column("trade_id").to_pylist())
        await reader.close()
        return ids, kills

    ids, kills = asyncio.run(go())
    assert kills >= 2
    assert ids == expected
