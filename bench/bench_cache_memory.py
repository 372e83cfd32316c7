"""API server memory under mixed load: how much of the RSS growth is the bar cache.

One ``marketlake serve`` process on a PostgreSQL store (8 symbols x 30 days of 1m
bars, plus their 5m and 1h roll-ups written as bars) gets mixed requests from 16
connections for ``SECONDS``: JSON pages of random ranges, limits and timeframes,
cursors, CSV pages, ``latest`` and ``prices/latest``. Its RSS is sampled every
0.5 s. The run is repeated with ``MARKETLAKE_API_CACHE_MAX_ROWS`` at its default
(1,000,000), at 200,000 and at 0 (cache off): the difference is what the cache
costs, its data (about 100 bytes per cached bar; rendered JSON pages count by
size, both bounded by ``MAX_ROWS``) and the peaks of loading series that the
allocator keeps (bounded by ``cache.MAX_LOADS`` loads at once).

    python -m bench --quick bench_cache_memory
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from marketlake.providers.synthetic import generate_bars
from marketlake.store import open_store

QUICK = os.environ.get("MARKETLAKE_BENCH_QUICK") == "1"
SECONDS = 12 if QUICK else 40
SYMBOLS = [f"M{i}USDT" for i in range(8)]
PG_SERVER = os.environ.get("MARKETLAKE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _fill(uri: str) -> None:
    from marketlake.store.pgmigrate import migrate

    migrate(uri, timescale="off")
    end = datetime(2024, 3, 1, tzinfo=UTC)
    with open_store(uri) as store:
        for tf in ("1m", "5m", "1h"):
            store.write_bars(generate_bars(SYMBOLS, tf, end - timedelta(days=30), end))
        store.ensure_instruments(SYMBOLS)


def _rss_mb(pid: int) -> float:
    total = 0
    for child in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _url(rng: random.Random) -> str:
    symbol = rng.choice(SYMBOLS)
    tf = rng.choice(["1m", "1m", "5m", "1h"])
    kind = rng.random()
    if kind < 0.15:
        return f"/api/v1/bars/{symbol}/latest?timeframe={tf}"
    if kind < 0.25:
        return f"/api/v1/prices/{symbol}/latest"
    day = rng.randint(1, 28)
    start = f"2024-02-{day:02d}T{rng.randint(0, 23):02d}:00"
    limit = rng.choice([10, 100, 500, 1000])
    fmt = "&format=csv" if kind > 0.9 else ""
    return f"/api/v1/bars/{symbol}?timeframe={tf}&start={start}&limit={limit}{fmt}"


async def _load(base: str, seconds: float) -> int:
    done = 0

    async def client(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            stop = time.monotonic() + seconds
            while time.monotonic() < stop:
                response = await http.get(_url(rng))
                if response.status_code == 200:
                    page = response.json() if "json" in response.headers["content-type"] else {}
                    cursor = page.get("next_cursor") if isinstance(page, dict) else None
                    if cursor and rng.random() < 0.5:
                        await http.get(_url(rng).split("&start")[0] + f"&cursor={cursor}")
                done += 1

    await asyncio.gather(*(client(i) for i in range(16)))
    return done


def _run(
    uri: str, max_rows: str, extra: dict[str, str] | None = None
) -> tuple[float, float, float, int]:
    """(RSS after start-up, at half time, at the end in MB, requests)."""
    port = 18000 + random.randint(0, 999)
    env = (
        os.environ
        | (extra or {})
        | {
            "MARKETLAKE_API_CACHE_MAX_ROWS": max_rows,
            "MARKETLAKE_API_RATE_LIMIT_PER_MINUTE": "0",
            "MARKETLAKE_API_ACCESS_LOG": "false",
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "marketlake", "--store", uri, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        start = _rss_mb(process.pid)
        samples: list[float] = []

        async def sample() -> None:
            while True:
                samples.append(_rss_mb(process.pid))
                await asyncio.sleep(0.5)

        async def go() -> int:
            sampler = asyncio.create_task(sample())
            try:
                return await _load(base, SECONDS)
            finally:
                sampler.cancel()

        requests = asyncio.run(go())
        return start, samples[len(samples) // 2], samples[-1], requests
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    import psycopg

    schema = f"bench_mem_{os.getpid()}"
    uri = f"{PG_SERVER}?schema={schema}"
    try:
        _fill(uri)
    except Exception as exc:  # noqa: BLE001 - no server: nothing to measure
        print(f"PostgreSQL not available: {exc}")
        return
    try:
        print(f"mixed load, 16 connections, {SECONDS} s per run, 1 server process")
        for max_rows in ("1000000", "200000", "0"):
            start, half, end, requests = _run(uri, max_rows)
            print(
                f"  MARKETLAKE_API_CACHE_MAX_ROWS={max_rows:>7}: RSS {start:.0f} MB after "
                f"start-up, {half:.0f} MB at half time, {end:.0f} MB at the end "
                f"({requests:,} requests; load {os.getloadavg()[0]:.2f} on "
                f"{os.cpu_count()} cores)"
            )
    finally:
        with psycopg.connect(PG_SERVER, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
