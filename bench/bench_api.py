"""REST API throughput and latency: MarketLake's server against plain FastAPI baselines.

Every figure comes from a real server process (uvicorn with uvloop and httptools)
and a load generator on loopback with 64 connections: ``wrk`` when it is
installed (``apt-get install wrk``), else a small asyncio HTTP/1.1 client
(slower, so absolute figures drop; ratios stay meaningful). Each scenario runs
``RUNS`` times; medians are printed.

Baselines (``bench/baseline_api.py``), measured in the same run: 100 prebuilt bars
as Python dicts through FastAPI's default JSON response, and the same bars as
prebuilt orjson bytes in a plain ``Response``, with one and two workers.

MarketLake: ``marketlake serve`` on an embedded store holding 5 symbols x 30 days
of 1-minute bars plus one 500k-bar series; with its defaults (access log, rate
limiter, metrics, auth dependency, bar cache). The cold rows turn the bar cache
off (every request queries DuckDB).

PostgreSQL rows: ``marketlake serve --workers 2`` on a PostgreSQL store, with the
bar cache checking the store's series versions (the default) and with the check
off (``MARKETLAKE_API_CACHE_CHECK_MS=0``: entries live ``MARKETLAKE_API_CACHE_TTL_S``
and are reloaded in the background, the behaviour before versions). Set
``MARKETLAKE_BENCH_API_ONLY=postgres`` to run only those rows. The load average is
printed beside the figures: on a shared machine it explains most of the spread.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from marketlake.providers.synthetic import generate_bars
from marketlake.store import open_store

QUICK = os.environ.get("MARKETLAKE_BENCH_QUICK") == "1"
SECONDS = 3 if QUICK else 8
RUNS = 1 if QUICK else 3
CONNECTIONS = 64
ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = ("AAPL", "MSFT", "SPY", "BTCUSDT", "ETHUSDT")
BIG = "BIGUSDT"
BIG_ROWS = 500_000


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _server(command: list[str], probe: str, env: dict[str, str] | None = None) -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=ROOT,
        env=os.environ | (env or {}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + probe, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"{command} did not start")
        httpx.get(base + probe.replace("/health", "/bars/BTCUSDT"), timeout=60)  # warm up
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _uvicorn(factory: str, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        f"bench.baseline_api:{factory}",
        "--factory",
        "--host",
        "127.0.0.1",
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def _marketlake(store: str, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from marketlake.cli.app import main; main()",
        "--store",
        store,
        "serve",
        "--workers",
        str(workers),
    ]


# -- load generation ------------------------------------------------------------------


def _wrk(url: str) -> tuple[float, float, int]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, p99_ms, int(bad.group(1)) if bad else 0


async def _client(
    host: str, port: int, path: str, stop: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    while time.perf_counter() < stop:
        began = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - began)
        if not head.startswith(b"HTTP/1.1 2"):
            errors.append(1)
    writer.close()


def _pyload(url: str) -> tuple[float, float, int]:
    parsed = httpx.URL(url)
    path = parsed.raw_path.decode()
    latencies: list[float] = []
    errors: list[int] = []

    async def run() -> None:
        stop = time.perf_counter() + SECONDS
        await asyncio.gather(
            *(
                _client(parsed.host, parsed.port or 80, path, stop, latencies, errors)
                for _ in range(CONNECTIONS)
            )
        )

    began = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - began
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000 if len(latencies) > 100 else 0.0
    return len(latencies) / elapsed, p99, len(errors)


def load(url: str) -> tuple[float, float, int]:
    """Median req/s and p99 (ms) over ``RUNS`` runs, and non-2xx responses seen."""
    generate = _wrk if shutil.which("wrk") else _pyload
    results = [generate(url) for _ in range(RUNS)]
    return (
        statistics.median(r[0] for r in results),
        statistics.median(r[1] for r in results),
        sum(r[2] for r in results),
    )


# -- data and scenarios ---------------------------------------------------------------


def _fill(path: Path) -> str:
    uri = f"duckdb:///{path}"
    end = datetime(2024, 3, 1, tzinfo=UTC)
    with open_store(uri) as store:
        store.write_bars(generate_bars(list(SYMBOLS), "1m", end - timedelta(days=30), end))
        store.write_bars(generate_bars(BIG, "1m", end - timedelta(minutes=BIG_ROWS), end))
        store.ensure_instruments([*SYMBOLS, BIG])
    return uri


def _last_byte_ms(url: str, tries: int = 5) -> tuple[float, float]:
    """(first request, median of the next ``tries``) time to the last byte, in ms."""
    times = []
    with httpx.Client(timeout=120) as client:
        for _ in range(tries + 1):
            began = time.perf_counter()
            response = client.get(url)
            assert response.status_code == 200
            assert len(response.content) > 1_000_000
            times.append((time.perf_counter() - began) * 1000)
    return times[0], statistics.median(times[1:])


def _row(
    rows: list[list[str]],
    name: str,
    result: tuple[float, float, int],
    base: float,
    fast: float,
    target: str,
) -> None:
    rps, p99, bad = result
    rows.append(
        [
            name,
            f"{rps:,.0f}",
            f"{p99:.1f}",
            f"{rps / base:.1f}x",
            f"{rps / fast:.2f}x",
            target + (f"  ({bad} non-2xx!)" if bad else ""),
        ]
    )


def loadavg() -> str:
    """The 1-minute load average and the core count, to print beside figures."""
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def main() -> None:
    generator = "wrk" if shutil.which("wrk") else "asyncio client (install wrk for more)"
    print(f"load: {generator}, {CONNECTIONS} connections, {SECONDS} s x {RUNS} runs (medians)")
    env = {"MARKETLAKE_API_RATE_LIMIT_PER_MINUTE": "100000000"}  # the limiter runs, never trips
    if os.environ.get("MARKETLAKE_BENCH_API_ONLY") == "postgres":
        rows: list[list[str]] = []
        _postgres_rows(rows, env, 0.0, 0.0)
        _print(rows)
        return
    with tempfile.TemporaryDirectory() as tmp:
        uri = _fill(Path(tmp) / "bench.duckdb")
        with _server(_uvicorn("dicts_app", 1), "/bars/X") as base:
            dicts = load(f"{base}/bars/BTCUSDT?limit=100")
        with _server(_uvicorn("orjson_app", 1), "/bars/X") as base:
            fast = load(f"{base}/bars/BTCUSDT?limit=100")
        with _server(_uvicorn("orjson_app", 2), "/bars/X") as base:
            fast2 = load(f"{base}/bars/BTCUSDT?limit=100")
        rows: list[list[str]] = []
        _row(rows, "baseline: dicts, default JSON, 1 worker", dicts, dicts[0], fast[0], "")
        _row(rows, "baseline: orjson bytes, 1 worker", fast, dicts[0], fast[0], "")
        _row(rows, "baseline: orjson bytes, 2 workers", fast2, dicts[0], fast[0], "")
        with _server(_marketlake(uri), "/api/v1/health", env) as base:
            api = f"{base}/api/v1"
            _row(
                rows,
                "bars limit=100",
                load(f"{api}/bars/BTCUSDT?limit=100"),
                dicts[0],
                fast[0],
                ">= 2,500 req/s, p99 <= 50 ms",
            )
            _row(
                rows,
                "bars limit=1000",
                load(f"{api}/bars/BTCUSDT?limit=1000"),
                dicts[0],
                fast[0],
                ">= 700 req/s",
            )
            _row(
                rows,
                "prices/latest",
                load(f"{api}/prices/BTCUSDT/latest"),
                dicts[0],
                fast[0],
                ">= 3,000 req/s",
            )
            cold, warm = _last_byte_ms(f"{api}/bars/{BIG}?format=arrow")
        with _server(
            _marketlake(uri), "/api/v1/health", env | {"MARKETLAKE_API_CACHE_MAX_ROWS": "0"}
        ) as base:
            api = f"{base}/api/v1"
            _row(
                rows,
                "bars limit=100, cache off",
                load(f"{api}/bars/BTCUSDT?limit=100"),
                dicts[0],
                fast[0],
                "(every request queries DuckDB)",
            )
            _, uncached_warm = _last_byte_ms(f"{api}/bars/{BIG}?format=arrow", tries=3)
        _postgres_rows(rows, env, dicts[0], fast2[0])
    _print(rows)
    print(
        f"500k bars as format=arrow, to the last byte: {warm:.0f} ms (first request, which "
        f"loads the cache: {cold:.0f} ms; cache off: {uncached_warm:.0f} ms); "
        "target <= 150 ms"
    )


def _postgres_rows(rows: list[list[str]], env: dict[str, str], dicts: float, fast2: float) -> None:
    """bars?limit=100 on PostgreSQL with 2 workers: series versions checked, and TTL only."""
    with _postgres_store() as pg:
        if pg is None:
            return
        for name, extra in (
            ("versions checked (default)", {}),
            ("TTL only, check off (before)", {"MARKETLAKE_API_CACHE_CHECK_MS": "0"}),
        ):
            with _server(_marketlake(pg, workers=2), "/api/v1/health", env | extra) as base:
                result = load(f"{base}/api/v1/bars/BTCUSDT?limit=100")
                _row(
                    rows,
                    f"bars limit=100, PostgreSQL, 2 workers, {name}",
                    result,
                    dicts or result[0],
                    fast2 or result[0],
                    f"p99 <= 30 ms; {loadavg()}",
                )


PG_SERVER = os.environ.get("MARKETLAKE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def _postgres_store() -> Iterator[str | None]:
    """A migrated PostgreSQL schema holding the same bars, dropped afterwards (None: no server)."""
    import psycopg

    schema = f"bench_api_{os.getpid()}"
    uri = f"{PG_SERVER}?schema={schema}"
    try:
        from marketlake.store.pgmigrate import migrate

        migrate(uri, timescale="off")
    except Exception as exc:  # noqa: BLE001 - any failure means: no PostgreSQL to measure
        print(f"PostgreSQL store not measured: {exc}")
        yield None
        return
    try:
        end = datetime(2024, 3, 1, tzinfo=UTC)
        with open_store(uri) as store:
            store.write_bars(generate_bars(list(SYMBOLS), "1m", end - timedelta(days=30), end))
            store.ensure_instruments(list(SYMBOLS))
        yield uri
    finally:
        with psycopg.connect(PG_SERVER, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _print(rows: list[list[str]]) -> None:
    head = ["scenario", "req/s", "p99 ms", "vs dicts", "vs orjson", "target"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        print(
            "  ".join(
                cell.ljust(w) if i in (0, 5) else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


if __name__ == "__main__":
    main()
