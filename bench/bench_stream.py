"""Streaming: analytics + alerts in one process, Redis Streams end to end, alert latency, memory.

Measured in one run, each against what a user would otherwise do:

1. **In-process analytics and alerts** (the live pipeline on trade batches, seven
   alert rules per symbol) against a straightforward pandas recomputation of
   the rolling window for every event. Target: >= 200k events/s.
2. **Redis end to end** with two ``marketlake worker`` processes (publish →
   worker → bars, analytics, alerts stored and published → ack), against raw
   redis-py ``XADD`` / ``XREADGROUP`` / ``XACK`` with one event per entry.
   Target: >= 50k events/s.
3. **Latency** at a steady 5k events/s: publish → alert received by an SSE
   client of ``/api/v1/alerts/stream``. Target: p99 <= 100 ms.
4. **Memory** of a worker at 5k events/s (``--soak SECONDS``, 60 by default;
   the issue asks for 600).
5. **Latency under stress** at 5k events/s (PostgreSQL store only): with one extra
   CPU-bound process running (target: p99 <= 100 ms), and with the store stalled
   for 5 s (another connection holds ``ACCESS EXCLUSIVE`` locks on the tables the
   workers write): p99 of the alerts received during the stall (target: <= 150 ms).

The alerts are read by an SSE client of a ``marketlake serve`` process (its own
process, as deployed), connected before the first event is published.

``--quick`` (``python -m bench --quick``) runs small sizes; set
``MARKETLAKE_BENCH_STREAM_ONLY=latency`` to run only the latency scenarios (3 and
5). The load average is printed beside each figure.

Two worker processes need a store both can write: PostgreSQL when the
PostgreSQL backend and server are there (``MARKETLAKE_BENCH_PG``), otherwise
each worker writes its own DuckDB file (said in the output). Figures on a
shared 2-core machine are noisy: each throughput is the median of ``--repeat``
runs.

    python -m bench bench_stream
    python -m bench.bench_stream --soak 600
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import bisect
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from marketlake.stream.alerts import RuleSet, parse_rule
from marketlake.stream.analytics import AnalyticsConfig
from marketlake.stream.events import Batch, now_us, trades_table
from marketlake.stream.pipeline import Pipeline

REDIS_URL = os.environ.get("MARKETLAKE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("MARKETLAKE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
MARKETLAKE = Path(sys.executable).parent / "marketlake"
WINDOW = 60
QUICK = os.environ.get("MARKETLAKE_BENCH_QUICK") == "1"
STALL_S = 5.0
WARMUP_S = 2.0  # latency: alerts of the first seconds (symbols met for the first time) left out
RULES = [  # every event is checked against all seven; they fire now and then, not constantly
    {"id": "above", "kind": "price_above", "threshold": 104.0},
    {"id": "below", "kind": "price_below", "threshold": 96.0},
    {"id": "cross", "kind": "price_cross", "level": 100.0, "cooldown": "1m"},
    {"id": "move", "kind": "pct_change", "window": "5m", "threshold": 1.5},
    {"id": "vol", "kind": "volatility_above", "threshold": 1.5},
    {"id": "dd", "kind": "drawdown_below", "threshold": -0.03},
    {"id": "spike", "kind": "volume_spike", "factor": 4.0},
]
RULES_YAML = "rules:\n" + "".join(f"  - {json.dumps(r)}\n" for r in RULES)


def trades(symbol: str, n: int, start_us: int, seed: int, gap_us: int = 20_000) -> pa.Table:
    """A random walk around 100 with trades every ``gap_us`` on average."""
    rng = np.random.default_rng(seed)
    ts = start_us + np.cumsum(rng.integers(1, 2 * gap_us, n))
    price = 100 * np.exp(np.cumsum(rng.normal(0, 0.0003, n)))
    size = rng.exponential(1.0, n)
    ids = np.arange(n).astype(str).tolist()
    return trades_table(
        symbol, ts.tolist(), price.tolist(), size.tolist(), [None] * n, ids, "bench"
    )


def batches(n_events: int, symbols: int, size: int, start_us: int) -> list[Batch]:
    per = n_events // symbols
    out = []
    for i in range(symbols):
        table = trades(f"B{i}USDT", per, start_us, seed=i)
        out += [Batch("trade", f"B{i}USDT", table.slice(j, size)) for j in range(0, per, size)]
    return out


def rule_set() -> RuleSet:
    return RuleSet(tuple(parse_rule(r) for r in RULES))


# -- 1. in-process ---------------------------------------------------------------------


def marketlake_in_process(n_events: int) -> float:
    """Events per second of the live pipeline (bars, analytics, 7 rules) on 4 symbols."""
    work = batches(n_events, 4, 500, 1_709_596_800_000_000)
    pipeline = Pipeline(AnalyticsConfig(window=WINDOW), rule_set())
    started = time.perf_counter()
    for batch in work:
        pipeline.process(batch)
        if pipeline.counters.events % 20_000 < 500:
            pipeline.take()
    pipeline.take()
    return n_events / (time.perf_counter() - started)


def pandas_per_event(n_events: int) -> float:
    """Events per second of recomputing the window with pandas at every event (one symbol)."""
    table = trades("P", n_events + 20_000, 1_709_596_800_000_000, seed=9)
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    price = table.column("price").to_numpy()
    size = table.column("size").to_numpy()
    index = pd.to_datetime(ts, unit="us")
    window_us = WINDOW * 60_000_000
    ppy = math.sqrt(365 * 24 * 60)
    prev = math.nan
    started = time.perf_counter()
    for i in range(20_000, 20_000 + n_events):
        lo = bisect.bisect_left(ts, ts[i] - window_us)
        frame = pd.DataFrame(
            {"price": price[lo : i + 1], "size": size[lo : i + 1]}, index=index[lo : i + 1]
        )
        closes = frame["price"].resample("1min").last().ffill()
        vol = np.log(closes).diff().std() * ppy
        drawdown = (closes / closes.cummax() - 1).min()
        minute_volume = frame["size"].resample("1min").sum()
        vwap = (frame["price"] * frame["size"]).sum() / frame["size"].sum()
        p = price[i]
        _ = (
            p > 104,
            p < 96,
            (prev < 100) != (p < 100),
            vol > 1.5,
            drawdown < -0.03,
            minute_volume.iloc[-1] > 4 * minute_volume.iloc[:-1].mean(),
            vwap,
            len(closes) > 5 and abs(p / closes.iloc[-6] - 1) > 0.015,
        )
        prev = p
    return n_events / (time.perf_counter() - started)


# -- Redis helpers -------------------------------------------------------------------


def redis_up() -> bool:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False
    return True


def cleanup(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def raw_redis(n: int) -> tuple[float, float]:
    """Entries per second of XADD (pipelined, one event per entry) and XREADGROUP+XACK."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    key = f"mlbench-raw-{uuid.uuid4().hex[:8]}"
    event = {
        b"symbol": b"B0USDT",
        b"ts": b"1709596800000000",
        b"price": b"100.01",
        b"size": b"0.5",
        b"id": b"123456",
    }
    try:
        client.xgroup_create(key, "g", id="0", mkstream=True)
        started = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd(key, event)
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        added = n / (time.perf_counter() - started)
        started = time.perf_counter()
        read = 0
        while read < n:
            response = client.xreadgroup("g", "c", {key: ">"}, count=1000)
            ids = [entry_id for _, entries in response for entry_id, _ in entries]
            client.xack(key, "g", *ids)
            read += len(ids)
        consumed = n / (time.perf_counter() - started)
    finally:
        client.delete(key)
    return added, consumed


def worker_env(prefix: str, store: str, config_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MARKETLAKE_BUS": REDIS_URL,
        "MARKETLAKE_BUS_PREFIX": prefix,
        "MARKETLAKE_STORE": store,
        "MARKETLAKE_CONFIG_DIR": str(config_dir),
        "MARKETLAKE_METRICS_PORT": "0",
        "MARKETLAKE_LOG_LEVEL": "WARNING",
        "MARKETLAKE_WORKER_LEASE_TTL_S": "5",
    }


def shared_store(tmp: Path) -> tuple[list[str], str]:
    """Store URIs for two workers and a description of the choice."""
    try:
        import psycopg

        import marketlake.store.postgres  # noqa: F401
        from marketlake.store.pgmigrate import migrate  # type: ignore[import-not-found]

        psycopg.connect(PG_URL, connect_timeout=2).close()
        schema = f"mlbench_{uuid.uuid4().hex[:8]}"
        uri = f"{PG_URL}?schema={schema}"
        migrate(uri, timescale="off")
        atexit.register(_drop_schema, schema)
        return [uri, uri], "one PostgreSQL store shared by both workers"
    except Exception:  # noqa: BLE001 - any missing piece means: fall back to DuckDB
        return (
            [f"duckdb:///{tmp}/w{i}.duckdb" for i in range(2)],
            "PostgreSQL store not available: each worker writes its own DuckDB file",
        )


def _drop_schema(schema: str) -> None:
    """Leave the database as the bench found it."""
    import psycopg

    with suppress(Exception), psycopg.connect(PG_URL, connect_timeout=2, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def _progress(prefix: str) -> tuple[int, int]:
    """(entries not yet acknowledged, entries published) over every raw shard."""
    from marketlake.stream.bus.redis import RedisBus

    bus = RedisBus(REDIS_URL, prefix=prefix)
    open_entries = total = 0
    for key in bus.raw_keys():
        if not await bus.redis.exists(key):
            continue
        total += await bus.redis.xlen(key)
        for group in await bus.redis.xinfo_groups(key):
            open_entries += int(group["pending"]) + int(group["lag"] or 0)
    await bus.close()
    return open_entries, total


def start_workers(prefix: str, stores: list[str], tmp: Path) -> list[subprocess.Popen[bytes]]:
    (tmp / "alert_rules.yml").write_text(RULES_YAML)
    procs = [
        subprocess.Popen(
            [str(MARKETLAKE), "worker", "--name", f"bench-{i}"],
            env=worker_env(prefix, store, tmp),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i, store in enumerate(stores)
    ]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if asyncio.run(_balanced(prefix, len(procs))):
            return procs
        time.sleep(0.2)
    raise RuntimeError("workers did not start and share the shards within 120 s")


async def _balanced(prefix: str, workers: int) -> bool:
    """Every shard leased, and by all ``workers`` (a shard in hand-over waits for a lease)."""
    from marketlake.stream.bus.redis import RedisBus

    bus = RedisBus(REDIS_URL, prefix=prefix)
    holders = [await bus.redis.get(bus.key("lease", s)) for s in range(bus.shards)]
    await bus.close()
    return all(holders) and len(set(holders)) == workers


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        with suppress(subprocess.TimeoutExpired):
            _, err = proc.communicate(timeout=60)
            if proc.returncode:
                print(err.decode()[-2000:], file=sys.stderr)


# -- 2. end to end -------------------------------------------------------------------


def end_to_end(n_events: int, tmp: Path) -> tuple[float, str]:
    """Events per second from the first publish until two workers acknowledged everything."""
    from marketlake.stream.bus.redis import RedisBus

    prefix = f"mlbench-{uuid.uuid4().hex[:8]}:"
    stores, how = shared_store(tmp)
    work = batches(n_events, 8, 500, now_us() - 3_600_000_000)
    procs = start_workers(prefix, stores, tmp)
    try:

        async def run() -> float:
            bus = RedisBus(REDIS_URL, prefix=prefix)
            started = time.perf_counter()
            for i in range(0, len(work), 50):
                await _publish_retrying(bus, work[i : i + 50])
            await bus.close()
            while await _progress(prefix) != (0, len(work)):
                await asyncio.sleep(0.02)
            return n_events / (time.perf_counter() - started)

        rate = asyncio.run(run())
    finally:
        stop_workers(procs)
        cleanup(prefix)
    return rate, how


# -- 3. latency and 4. memory at a steady rate -------------------------------------------


def steady(
    rate: int,
    seconds: float,
    tmp: Path,
    *,
    workers: int = 2,
    sse: bool = True,
    hog: bool = False,
    stall_at: float | None = None,
) -> dict[str, Any]:
    """Publish ``rate`` events/s for ``seconds``; alert latency over SSE and worker memory.

    ``hog`` runs one extra CPU-bound process meanwhile; ``stall_at`` (seconds after the
    start) locks the tables the workers write for ``STALL_S`` seconds (PostgreSQL only).
    """
    prefix = f"mlbench-{uuid.uuid4().hex[:8]}:"
    stores, _ = shared_store(tmp)
    procs = start_workers(prefix, stores[:workers], tmp)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if hog else None
    try:
        stall = (stores[0], stall_at) if stall_at is not None else None
        with _api_server(prefix, tmp) if sse else nullcontext("") as base:
            result = asyncio.run(_steady(prefix, rate, seconds, procs, base, stall))
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
        stop_workers(procs)
        cleanup(prefix)
    return result


async def _steady(
    prefix: str,
    rate: int,
    seconds: float,
    procs: list[subprocess.Popen[bytes]],
    sse_base: str,
    stall: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """With ``sse_base`` (the URL of a running API), an SSE client is connected before
    the first event is published, so start-up never counts as latency."""
    latencies: list[float] = []
    arrivals: list[int] = []
    window: list[int] = []
    rss: list[list[int]] = [[] for _ in procs]
    stop = asyncio.Event()
    listening = asyncio.Event()
    listener = None
    if sse_base:
        listener = asyncio.create_task(_listen(sse_base, latencies, listening, arrivals))
        await asyncio.wait_for(listening.wait(), 60)
    tasks = [
        asyncio.create_task(_publish(prefix, rate, seconds, stop)),
        asyncio.create_task(_sample_rss(procs, rss, stop)),
    ]
    if listener is not None:
        tasks.append(listener)
    stalling = (
        asyncio.create_task(_stall(stall[0], stall[1], window)) if stall is not None else None
    )
    await tasks[0]
    await asyncio.sleep(1.0)
    if stalling is not None:
        await stalling  # the lock is released before the workers stop
    stop.set()
    for task in tasks[1:]:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    lo, hi = window if len(window) == 2 else (0, -1)
    during = [ms for ms, at in zip(latencies, arrivals, strict=True) if lo <= at <= hi]
    after = [  # the writers catch up on what the stall held back
        ms for ms, at in zip(latencies, arrivals, strict=True) if hi < at <= hi + 3_000_000
    ]
    return {"latencies_ms": latencies, "rss_kb": rss, "stall_ms": during, "after_ms": after}


async def _stall(uri: str, after_s: float, window: list[int]) -> None:
    """Lock every table the workers write for ``STALL_S`` seconds, from ``after_s``;
    ``window`` gets the (start, end) of the lock in epoch microseconds."""
    import psycopg

    from marketlake.store.pgconn import parse_uri

    await asyncio.sleep(after_s)
    schema = parse_uri(uri).schema
    conn = await asyncio.to_thread(psycopg.connect, PG_URL, connect_timeout=5)
    try:
        tables = ", ".join(f'"{schema}".{t}' for t in ("alerts", "trades", "bars", "metrics"))
        await asyncio.to_thread(conn.execute, f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
        window.append(now_us())
        await asyncio.sleep(STALL_S)
        window.append(now_us())
    finally:
        await asyncio.to_thread(conn.rollback)
        conn.close()


async def _publish(prefix: str, rate: int, seconds: float, stop: asyncio.Event) -> None:
    """Every 10 ms, 1/100 s worth of trades of 8 symbols (so both workers have some),
    stamped with the wall clock."""
    from marketlake.stream.bus.redis import RedisBus

    bus = RedisBus(REDIS_URL, prefix=prefix)
    rng = np.random.default_rng(1)
    prices = dict.fromkeys((f"B{i}USDT" for i in range(8)), 100.0)
    per_tick = max(1, rate // 100 // len(prices))
    next_id = 0
    started = time.perf_counter()
    tick = 0
    while time.perf_counter() - started < seconds:
        out = []
        for symbol in prices:
            steps = rng.normal(0, 0.0008, per_tick)
            walk = prices[symbol] * np.exp(np.cumsum(steps))
            prices[symbol] = float(walk[-1])
            stamp = now_us()
            out.append(
                Batch(
                    "trade",
                    symbol,
                    trades_table(
                        symbol,
                        [stamp] * per_tick,
                        walk.tolist(),
                        [1.0] * per_tick,
                        [None] * per_tick,
                        [str(i) for i in range(next_id, next_id + per_tick)],
                        "bench",
                    ),
                )
            )
            next_id += per_tick
        await _publish_retrying(bus, out)
        tick += 1
        await asyncio.sleep(max(0.0, started + tick * 0.01 - time.perf_counter()))
    await bus.close()


async def _publish_retrying(bus: Any, batches: list[Batch]) -> None:
    """Publish; on a busy machine Redis may not answer in time, so try again a few times."""
    from marketlake.errors import BusError

    for attempt in range(5):
        try:
            await bus.publish(batches)
            return
        except BusError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.5)


@contextmanager
def _api_server(prefix: str, tmp: Path) -> Iterator[str]:
    """``marketlake serve`` on the bus (its own process, as deployed); yields its URL."""
    from bench.bench_api import _server

    command = [str(MARKETLAKE), "--store", f"duckdb:///{tmp}/api.duckdb", "serve"]
    env = worker_env(prefix, f"duckdb:///{tmp}/api.duckdb", tmp) | {
        "MARKETLAKE_API_ACCESS_LOG": "false",
        "MARKETLAKE_API_RATE_LIMIT_PER_MINUTE": "0",
    }
    with _server(command, "/api/v1/health", env) as base:
        yield base


async def _listen(
    base: str, latencies: list[float], listening: asyncio.Event, arrivals: list[int]
) -> None:
    """An SSE client of ``/api/v1/alerts/stream``; sets ``listening`` once connected.

    Alerts of the first ``WARMUP_S`` seconds after that are left out: that is when
    each worker meets its symbols for the first time (loading their state from the
    store), not the steady state the target is about."""
    import httpx

    async with (
        httpx.AsyncClient(timeout=None) as client,
        client.stream("GET", f"{base}/api/v1/alerts/stream") as response,
    ):
        measure_from = now_us() + int(WARMUP_S * 1e6)
        listening.set()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                alert = json.loads(line[6:])
                if _alert_us(alert) >= measure_from:
                    arrived = now_us()
                    latencies.append((arrived - _alert_us(alert)) / 1000)
                    arrivals.append(arrived)


def _alert_us(alert: dict[str, Any]) -> int:
    from marketlake.schema import parse_time, to_epoch_us

    return to_epoch_us(parse_time(alert["ts"]))


async def _sample_rss(
    procs: list[subprocess.Popen[bytes]], rss: list[list[int]], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        for i, proc in enumerate(procs):
            with suppress(OSError, ValueError):
                status = Path(f"/proc/{proc.pid}/status").read_text()
                line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
                rss[i].append(int(line.split()[1]))
        await asyncio.sleep(1.0)


# -- report --------------------------------------------------------------------------


def _median(runs: list[float]) -> float:
    return statistics.median(runs)


def loadavg() -> str:
    """The 1-minute load average and the core count, printed beside figures."""
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def _p(values: list[float]) -> str:
    if not values:
        return "no alerts"
    q = np.percentile(values, [50, 99])
    return f"p50 {q[0]:.1f} ms, p99 {q[1]:.1f} ms over {len(values)} alerts"


def latency_under_stress(latency_s: float, tmp: Path) -> None:
    """Scenario 5: an extra CPU-bound process; the store stalled for ``STALL_S``."""
    _, how = shared_store(tmp)
    if "PostgreSQL" not in how:
        print("latency under stress: needs the PostgreSQL store (" + how + ")")
        return
    (tmp / "hog").mkdir()
    lat = steady(5000, latency_s, tmp / "hog", hog=True)["latencies_ms"]
    print(
        f"alert latency at 5k events/s with one extra CPU-bound process: {_p(lat)} "
        f"(target p99 <= 100 ms; {loadavg()})"
    )
    (tmp / "stall").mkdir()
    seconds = max(latency_s, WARMUP_S + STALL_S + 4)
    result = steady(5000, seconds, tmp / "stall", stall_at=WARMUP_S + 1)
    print(
        f"alert latency at 5k events/s, store locked {STALL_S:.0f} s: during the stall "
        f"{_p(result['stall_ms'])}; 3 s after it {_p(result['after_ms'])}; whole run "
        f"{_p(result['latencies_ms'])} "
        f"(target p99 <= 150 ms during the stall; {loadavg()})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench_stream", description=__doc__)
    parser.add_argument(
        "--events", type=int, default=50_000 if QUICK else 400_000, help="events per run"
    )
    parser.add_argument("--repeat", type=int, default=1 if QUICK else 3, help="runs per figure")
    parser.add_argument(
        "--latency-s", type=float, default=10.0 if QUICK else 20.0, help="seconds at 5k events/s"
    )
    parser.add_argument(
        "--soak", type=float, default=15.0 if QUICK else 60.0, help="seconds of the memory run"
    )
    args = parser.parse_args(argv if argv is not None else [])
    only = os.environ.get("MARKETLAKE_BENCH_STREAM_ONLY", "")

    if only != "latency":
        ours = _median([marketlake_in_process(args.events) for _ in range(args.repeat)])
        theirs = _median([pandas_per_event(1000) for _ in range(args.repeat)])
        print(
            f"in-process analytics + 7 alert rules: MarketLake {ours:,.0f} events/s; "
            f"pandas window recomputed per event {theirs:,.0f} events/s; ratio "
            f"{ours / theirs:,.0f}x (target >= 200,000 events/s; {loadavg()})"
        )
    if not redis_up():
        print(f"Redis at {REDIS_URL} not reachable: end-to-end, latency and memory skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        if only != "latency":
            raw = [raw_redis(50_000) for _ in range(args.repeat)]
            xadd, xread = _median([r[0] for r in raw]), _median([r[1] for r in raw])
            runs = [
                end_to_end(args.events, Path(tmp) / f"e2e{i}")
                for i in range(args.repeat)
                if (Path(tmp) / f"e2e{i}").mkdir() is None
            ]
            e2e, how = _median([r[0] for r in runs]), runs[0][1]
            print(
                f"Redis end to end, 2 workers ({how}): {e2e:,.0f} events/s "
                f"(target >= 50,000); raw redis-py one event per entry: XADD {xadd:,.0f}/s, "
                f"XREADGROUP+XACK {xread:,.0f}/s; ratio to raw XADD {e2e / xadd:.1f}x "
                f"({loadavg()})"
            )
        (Path(tmp) / "lat").mkdir()
        lat = steady(5000, args.latency_s, Path(tmp) / "lat")["latencies_ms"]
        print(
            f"alert latency at 5k events/s, publish -> SSE client: {_p(lat)} after a "
            f"{WARMUP_S:.0f} s warm-up (target p99 <= 100 ms; {loadavg()})"
        )
        latency_under_stress(args.latency_s, Path(tmp))
        if only == "latency":
            return
        (Path(tmp) / "soak").mkdir()
        memory = steady(5000, args.soak, Path(tmp) / "soak", workers=1, sse=False)["rss_kb"][0]
        if len(memory) > 10:
            third = len(memory) // 3
            print(
                f"worker memory over {args.soak:.0f} s at 5k events/s: "
                f"{statistics.median(memory[third : 2 * third]) / 1024:.1f} MiB in the middle "
                f"third, {statistics.median(memory[2 * third :]) / 1024:.1f} MiB in the last "
                f"third, max {max(memory) / 1024:.1f} MiB ({loadavg()})"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
