"""Real worker processes on the real Redis: one is SIGKILLed mid-stream, nothing is lost or doubled.

Two variants: with the PostgreSQL store both workers run at the same time in one
consumer group (the other takes over the dead one's shards and reclaims its
pending entries); with the embedded store (one writer process at a time) the
second worker starts after the first was killed and reclaims the same way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from marketlake.store import Store, open_store
from marketlake.stream.alerts import RuleSet, parse_rule
from marketlake.stream.analytics import AnalyticsConfig
from marketlake.stream.bus import shard_of
from marketlake.stream.bus.redis import RedisBus
from marketlake.stream.events import RAW_TOPIC
from marketlake.stream.pipeline import Pipeline
from tests.conftest import REDIS_URL
from tests.stream.helpers import batches_of, make_trades, reference_bars, stored_bars

SYMBOLS = [f"S{i}USDT" for i in range(8)]
PER_SYMBOL = 1500
RULE = "rules:\n  - {id: cross, kind: price_cross, level: 100.0}\n"
MARKETLAKE = Path(sys.executable).parent / "marketlake"


def _trades() -> dict[str, pa.Table]:
    return {
        s: make_trades(s, PER_SYMBOL, seed=i, first_id=i * 100_000) for i, s in enumerate(SYMBOLS)
    }


def _env(store_uri: str, prefix: str, config_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MARKETLAKE_STORE": store_uri,
        "MARKETLAKE_BUS": REDIS_URL,
        "MARKETLAKE_BUS_PREFIX": prefix,
        "MARKETLAKE_BUS_SHARDS": "4",
        "MARKETLAKE_WORKER_LEASE_TTL_S": "1.5",
        "MARKETLAKE_WORKER_FETCH_ENTRIES": "3",
        "MARKETLAKE_METRICS_PORT": "0",
        "MARKETLAKE_CONFIG_DIR": str(config_dir),
        "MARKETLAKE_ALERTS_RELOAD_S": "3600",
        "MARKETLAKE_LOG_LEVEL": "WARNING",
    }


def _start(name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(MARKETLAKE), "worker", "--name", name, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


class Bus:
    """Synchronous helpers over the test's Redis prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def run(self, coro: Any) -> Any:
        return asyncio.run(coro)

    def publish(self, batches: list[Any]) -> None:
        async def go() -> None:
            bus = RedisBus(REDIS_URL, prefix=self.prefix, shards=4)
            await bus.publish(batches)
            await bus.close()

        self.run(go())

    def lease_holders(self) -> set[str]:
        """The workers holding at least one shard."""

        async def go() -> set[str]:
            bus = RedisBus(REDIS_URL, prefix=self.prefix, shards=4)
            owners = {await bus.redis.get(bus.key("lease", s)) for s in range(4)}
            await bus.close()
            return {o.decode() for o in owners if o}

        result: set[str] = self.run(go())
        return result

    def progress(self) -> tuple[int, int, dict[str, Any]]:
        """(entries not yet acknowledged, entries in the streams, worker statuses)."""

        async def go() -> tuple[int, int, dict[str, Any]]:
            bus = RedisBus(REDIS_URL, prefix=self.prefix, shards=4)
            open_entries = total = 0
            for key in bus.raw_keys():
                if not await bus.redis.exists(key):
                    continue
                total += await bus.redis.xlen(key)
                for group in await bus.redis.xinfo_groups(key):
                    open_entries += int(group["pending"]) + int(group["lag"] or 0)
            statuses = await bus.statuses()
            await bus.close()
            return open_entries, total, statuses

        result: tuple[int, int, dict[str, Any]] = self.run(go())
        return result


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate(timeout=10)


def _wait(
    condition: Any, timeout: float, what: str, process: subprocess.Popen[bytes] | None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.1)
    detail = ""
    if process is not None:
        if process.poll() is None:
            process.kill()
        detail = process.communicate(timeout=10)[1].decode()[-3000:]
    raise AssertionError(f"timed out waiting for {what}: {detail}")


def _expected_alerts(trades: dict[str, pa.Table]) -> set[str]:
    pipeline = Pipeline(
        AnalyticsConfig(),
        RuleSet((parse_rule({"id": "cross", "kind": "price_cross", "level": 100.0}),)),
    )
    for table in trades.values():
        for batch in batches_of(table, 100):
            pipeline.process(batch)
    return {a.id for a in pipeline.take().alerts}


def _check_store(store: Store, trades: dict[str, pa.Table]) -> None:
    everything = pa.concat_tables(trades.values())
    stored = pa.concat_tables([store.read_trades(s) for s in SYMBOLS])
    ids = stored.column("trade_id").to_pylist()
    assert len(ids) == len(set(ids)) == everything.num_rows
    got = stored_bars(store.read_bars(SYMBOLS, "1m").table)
    expected = reference_bars(everything)
    pd.testing.assert_frame_equal(
        got, expected, check_dtype=False, check_names=False, check_index_type=False, rtol=1e-12
    )
    alerts = [a["id"] for a in store.select_rows("alerts")]
    assert len(alerts) == len(set(alerts))
    assert set(alerts) == _expected_alerts(trades)
    prices = {r["symbol"]: r["value"] for r in store.select_rows("metrics", {"name": "price"})}
    assert prices == {s: t.column("price")[-1].as_py() for s, t in trades.items()}


def _run_with_a_kill(store_uri: str, prefix: str, config_dir: Path, *, concurrent: bool) -> None:
    assert {shard_of(s, 4) for s in SYMBOLS} == {0, 1, 2, 3}  # every worker's shards see events
    (config_dir / "alert_rules.yml").write_text(RULE)
    env = _env(store_uri, prefix, config_dir)
    bus = Bus(prefix)
    trades = _trades()
    batches = [b for t in trades.values() for b in batches_of(t, 100)]
    victim = _start("victim", env)
    survivor = _start("survivor", env) if concurrent else None
    try:
        expected = {"victim", "survivor"} if concurrent else {"victim"}
        _wait(
            lambda: bus.lease_holders() == expected, 240, "the workers to share the shards", victim
        )
        bus.publish(batches[: len(batches) // 2])
        _wait(
            lambda: bus.progress()[2].get("worker:victim", {}).get("events", 0) > 0,
            240,
            "the first worker to process events",
            victim,
        )
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=10)
        if survivor is None:
            survivor = _start("survivor", env)
        bus.publish(batches[len(batches) // 2 :])
        _wait(
            lambda: bus.progress()[:2] == (0, len(batches)),
            300,
            "every entry to be acknowledged",
            survivor,
        )
    finally:
        for process in (victim, survivor):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        if sys.exc_info()[0] is not None:  # failing: reap both, the error is what matters
            for process in (victim, survivor):
                if process is not None:
                    _reap(process)
    assert survivor is not None
    out, err = survivor.communicate(timeout=30)
    assert survivor.returncode == 0, err.decode()
    assert b'"events"' in out
    store = open_store(store_uri)
    try:
        _check_store(store, trades)
    finally:
        store.close()


@pytest.mark.redis
@pytest.mark.slow
def test_killed_worker_is_replaced_by_the_next_and_every_event_is_stored_once(
    tmp_path: Path, redis_prefix: str
) -> None:
    _run_with_a_kill(f"duckdb:///{tmp_path}/ml.duckdb", redis_prefix, tmp_path, concurrent=False)


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_one_killed_mid_stream_store_every_event_once(
    tmp_path: Path, redis_prefix: str, request: pytest.FixtureRequest
) -> None:
    try:
        import marketlake.store.postgres  # noqa: F401
    except ImportError:
        pytest.skip(
            "two concurrent worker processes need a store they can share: the "
            "PostgreSQL store is not on this branch yet"
        )
    store: Store = request.getfixturevalue("pg")
    _run_with_a_kill(store.uri, redis_prefix, tmp_path, concurrent=True)


def test_raw_topic_name() -> None:
    assert RAW_TOPIC == "market-data-raw"
