"""Ingest throughput: MarketLake vs a yfinance-style script, against the same local mirror.

The job (from issue 4): 20 stocks x 1 year of daily bars (Yahoo chart API) plus
5 crypto pairs x 30 days of 1-minute bars (Binance klines, 1000 per page),
served by ``python -m marketlake.tools.mirror`` in its own process. A warm-up run of
each client records every page, so the measured runs replay recorded bytes.

* **MarketLake**: two ``run_ingest`` jobs (concurrency 4) into a DuckDB store.
* **Alternative**: what a yfinance user writes: one symbol after another,
  synchronous HTTP, each page into a pandas DataFrame, ``DataFrame.to_sql``
  into SQLite.
* **Server time**: the same pages fetched with MarketLake's HTTP client (httpx on
  aiohttp's transport) and concurrency, job after job, and nothing else done with
  them; MarketLake's overhead is the share of its wall time beyond that.

``BENCH_INGEST_DELAY_S`` makes the mirror wait that long before each answer, as a
vendor across a network would (default 0: the mirror answers as fast as it can, so
the server's own time is as short as it gets).

Figures are medians of ``ROUNDS`` runs (``BENCH_ROUNDS``, default 3; 1 with ``--quick``),
each into a fresh store.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from marketlake.config import Settings
from marketlake.ingest.jobs import run_ingest
from marketlake.providers.binance.rest import BinanceProvider
from marketlake.providers.http import new_client
from marketlake.providers.yahoo import YahooProvider
from marketlake.store import open_store

STOCKS = [f"S{i:02d}" for i in range(20)]
CRYPTO = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]
DAILY = (datetime(2023, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC))
MINUTES = (datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC))
QUICK = os.environ.get("MARKETLAKE_BENCH_QUICK") == "1"
DELAY_S = float(os.environ.get("BENCH_INGEST_DELAY_S", "0"))
"""Seconds the mirror waits before each answer (0: as fast as it can answer)."""
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1" if QUICK else "3"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mirror() -> tuple[subprocess.Popen[bytes], str]:
    """The mirror in its own process, so it does not share the client's interpreter."""
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "marketlake.tools.mirror",
            "--port",
            str(port),
            "--delay",
            str(DELAY_S),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(f"{url}/health", timeout=1.0)
            return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the mirror did not start")


async def marketlake_run(url: str, store_uri: str, urls: list[str] | None = None) -> int:
    """Both jobs through MarketLake; returns the bars stored. Records request URLs if asked."""
    settings = Settings(yahoo_url=url, binance_url=url, rate_limit=False)  # a local mirror
    rows = 0
    with open_store(store_uri) as store:
        for cls, symbols, timeframe, (start, end) in (
            (YahooProvider, STOCKS, "1d", DAILY),
            (BinanceProvider, CRYPTO, "1m", MINUTES),
        ):
            # the provider makes its own client, as in the CLI (one that records, if asked)
            client = (
                None
                if urls is None
                else httpx.AsyncClient(event_hooks={"request": [_recorder(urls)]}, timeout=30)
            )
            provider = cls(settings, client)
            provider.clock = lambda: datetime(2024, 3, 10, tzinfo=UTC)
            result = await run_ingest(store, provider, symbols, timeframe, start, end)
            await (client.aclose() if client is not None else provider.aclose())
            assert result.status == "succeeded", result.summary()
            rows += sum(s.inserted for s in result.symbols)
    return rows


def _recorder(urls: list[str] | None) -> Any:
    async def record(request: httpx.Request) -> None:
        assert urls is not None
        urls.append(str(request.url))

    return record


async def server_only(urls: list[str], concurrency: int = 4) -> None:
    """The same pages, fetched per symbol in order, ``concurrency`` symbols at a time, job
    after job (the Yahoo job's pages, then the Binance job's) as MarketLake runs them."""
    jobs: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for url in urls:
        parsed = httpx.URL(url)
        job = "yahoo" if parsed.path.startswith("/v8/") else "binance"
        jobs[job][parsed.params.get("symbol") or parsed.path].append(url)
    async with new_client(30.0) as client:

        async def fetch(pages: list[str], slots: asyncio.Semaphore) -> None:
            async with slots:
                for page in pages:
                    (await client.get(page)).raise_for_status()

        for by_symbol in jobs.values():
            slots = asyncio.Semaphore(concurrency)
            await asyncio.gather(*(fetch(pages, slots) for pages in by_symbol.values()))


def yfinance_style(url: str, db_path: Path) -> int:
    """The alternative: sequential per-symbol fetch, pandas frames, ``to_sql`` into SQLite."""
    rows = 0
    with httpx.Client(timeout=30) as http, sqlite3.connect(db_path) as db:
        for symbol in STOCKS:
            params = {
                "period1": int(DAILY[0].timestamp()),
                "period2": int(DAILY[1].timestamp()),
                "interval": "1d",
                "events": "div,splits",
            }
            result = http.get(f"{url}/v8/finance/chart/{symbol}", params=params).json()
            chart = result["chart"]["result"][0]
            frame = pd.DataFrame(
                chart["indicators"]["quote"][0],
                index=pd.to_datetime(chart["timestamp"], unit="s", utc=True),
            )
            frame = (
                frame.dropna().rename_axis("ts").reset_index().assign(symbol=symbol, trades=None)
            )
            rows += frame.to_sql("bars", db, if_exists="append", index=False) or 0
        for symbol in CRYPTO:
            start_ms, end_ms = (
                int(MINUTES[0].timestamp() * 1000),
                int(MINUTES[1].timestamp() * 1000) - 1,
            )
            frames = []
            while start_ms <= end_ms:
                params = {
                    "symbol": symbol,
                    "interval": "1m",
                    "startTime": start_ms,
                    "endTime": end_ms,
                    "limit": 1000,
                }
                page = http.get(f"{url}/api/v3/klines", params=params).json()
                if not page:
                    break
                frames.append(
                    pd.DataFrame(
                        page,
                        columns=[
                            "ts",
                            "open",
                            "high",
                            "low",
                            "close",
                            "volume",
                            "close_time",
                            "quote",
                            "trades",
                            "taker_base",
                            "taker_quote",
                            "ignore",
                        ],
                    )
                )
                if len(page) < 1000:
                    break
                start_ms = page[-1][0] + 1
            frame = pd.concat(frames).astype(
                {"open": float, "high": float, "low": float, "close": float, "volume": float}
            )
            frame["ts"] = pd.to_datetime(frame["ts"], unit="ms", utc=True)
            frame = frame[["ts", "open", "high", "low", "close", "volume", "trades"]]
            rows += (
                frame.assign(symbol=symbol).to_sql("bars", db, if_exists="append", index=False) or 0
            )
    return rows


def _timed(fn: Any, *args: Any) -> tuple[float, float, Any]:
    """Wall seconds, CPU seconds of this process (all threads) and the result."""
    began, cpu = time.perf_counter(), time.process_time()
    value = fn(*args)
    return time.perf_counter() - began, time.process_time() - cpu, value


def main() -> None:
    """Run the benchmark and print bars/s, overhead and the ratio."""
    mirror, url = start_mirror()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            urls: list[str] = []
            bars = asyncio.run(marketlake_run(url, f"duckdb:///{folder}/warm.duckdb", urls))
            yfinance_style(url, folder / "warm.sqlite")
            runs: dict[str, list[tuple[float, float]]] = defaultdict(list)
            for round_ in range(ROUNDS):
                wall, cpu, stored = _timed(
                    lambda r=round_: asyncio.run(
                        marketlake_run(url, f"duckdb:///{folder}/ml{r}.duckdb")
                    )
                )
                assert stored == bars
                runs["ours"].append((wall, cpu))
                runs["raw"].append(_timed(lambda: asyncio.run(server_only(urls)))[:2])
                runs["theirs"].append(
                    _timed(yfinance_style, url, folder / f"yf{round_}.sqlite")[:2]
                )
    finally:
        mirror.terminate()
        mirror.wait()
    medians = {
        name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for name, values in runs.items()
    }
    report(bars, len(urls), medians)


def report(bars: int, pages: int, medians: dict[str, tuple[float, float]]) -> None:
    """Print the figures: wall time, bars/s and client CPU per contender, then the ratio."""
    (ours, our_cpu), (raw, _), (theirs, their_cpu) = (medians[k] for k in ("ours", "raw", "theirs"))
    overhead = max(0.0, (ours - raw) / ours)
    delay = f", {DELAY_S * 1000:g} ms before each answer" if DELAY_S else ""
    print(
        f"ingest: {bars:,} bars in {pages} pages from a local mirror{delay} "
        f"(medians of {ROUNDS} runs; CPU = client process, all threads)"
    )
    print(
        f"  MarketLake (4 concurrent, DuckDB):     {ours:6.2f} s  {bars / ours:9,.0f} bars/s"
        f"  CPU {our_cpu:5.2f} s"
    )
    print(
        f"  server alone (same pages, same order): {raw:6.2f} s  -> MarketLake overhead "
        f"{overhead:.0%} of its time"
    )
    print(
        f"  yfinance-style (sequential, to_sql):   {theirs:6.2f} s  {bars / theirs:9,.0f} "
        f"bars/s  CPU {their_cpu:5.2f} s"
    )
    print(
        f"  ratio: MarketLake is {theirs / ours:.2f}x the yfinance-style script "
        f"(wall), {their_cpu / our_cpu:.2f}x (CPU)"
    )


if __name__ == "__main__":
    main()
