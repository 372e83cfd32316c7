"""Pieces of the API on their own: jobs that fail or are cancelled, the cache, limiters, serve."""

from __future__ import annotations

import asyncio
import json
import pathlib
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, ClassVar

import pyarrow as pa
import pytest

from marketlake.api.cache import BarCache
from marketlake.api.jobs import IngestPlan, JobRunner
from marketlake.api.observability import ApiMetrics
from marketlake.api.ratelimit import MemoryRateLimiter, RedisRateLimiter, make_rate_limiter
from marketlake.errors import ProviderError, RateLimitError
from marketlake.providers.base import Provider
from marketlake.schema import Timeframe, parse_time
from marketlake.store import Store
from tests.api.conftest import settings
from tests.conftest import bars_for


class Failing(Provider):
    """A provider that fails (or hangs) on demand."""

    name: ClassVar[str] = "failing"
    timeframes: ClassVar[tuple[str, ...]] = ()
    mode = "vendor"

    async def fetch_bars(
        self, symbol: str, timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> AsyncIterator[pa.Table]:
        if self.mode == "hang":
            await asyncio.sleep(60)
        if self.mode == "bug":
            raise ZeroDivisionError("oops")
        raise ProviderError("vendor said no")
        yield  # pragma: no cover - makes this an async generator


def _plan(provider: Provider) -> IngestPlan:
    return IngestPlan(
        provider,
        ["AAPL"],
        Timeframe.parse("1d"),
        parse_time("2024-03-01"),
        parse_time("2024-03-05"),
    )


@pytest.mark.parametrize(
    ("mode", "status", "error"),
    [
        ("vendor", "failed", "AAPL: vendor said no"),
        ("bug", "failed", "internal error: ZeroDivisionError('oops')"),
        ("hang", "cancelled", "the server stopped during the job"),
    ],
)
async def test_jobs_record_how_they_ended(duck: Store, mode: str, status: str, error: str) -> None:
    runner = JobRunner(settings(), ApiMetrics())
    provider = Failing(settings())
    provider.mode = mode
    plan = _plan(provider)
    job_id = runner.start_record(duck, plan)
    runner.launch(duck, plan, job_id)
    await asyncio.sleep(0.2)
    await runner.shutdown()
    job = duck.get_job(job_id)
    assert job.status == status
    assert job.error == error
    assert runner.running == []


def test_cache_of_a_shared_store_expires_after_its_ttl(
    duck: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(duck), "exclusive", False)
    duck.write_bars(bars_for("AAPL"))
    cache = BarCache(max_rows=10_000, ttl_s=60)
    first = cache.series(duck, "AAPL", "1m")
    duck.write_bars(bars_for("AAPL", start="2024-03-06", end="2024-03-07"))
    assert cache.series(duck, "AAPL", "1m") is first  # within the TTL: stale by design
    cache.ttl_s = 0
    fresh = cache.series(duck, "AAPL", "1m")
    assert fresh is not None
    assert fresh.rows == duck.count_bars("AAPL", "1m")


def test_a_shared_store_series_used_past_half_its_ttl_reloads_in_the_background(
    duck: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(duck), "exclusive", False)
    duck.write_bars(bars_for("AAPL"))
    cache = BarCache(max_rows=10_000, ttl_s=2.0)
    first = cache.series(duck, "AAPL", "1m")
    duck.write_bars(bars_for("AAPL", start="2024-03-06", end="2024-03-07"))
    assert cache.peek(duck, "AAPL", "1m") is first  # young: no reload
    time.sleep(1.05)
    assert cache.peek(duck, "AAPL", "1m") is first  # past half the TTL: served, reload queued
    deadline = time.monotonic() + 5
    while cache.peek(duck, "AAPL", "1m") is first and time.monotonic() < deadline:
        time.sleep(0.01)
    fresh = cache.peek(duck, "AAPL", "1m")
    assert fresh is not None
    assert fresh.rows == duck.count_bars("AAPL", "1m")
    cache.close()


def test_callers_missing_the_same_entry_at_once_load_it_once(duck: Store) -> None:
    """A stampede on an expired entry (many requests in flight) costs one store query."""
    cache = BarCache(max_rows=10_000, ttl_s=60)
    calls: list[int] = []
    started = threading.Event()

    def slow() -> int:
        calls.append(1)
        started.set()
        time.sleep(0.2)
        return 42

    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(cache.memo, duck, ("k",), slow)
        started.wait(5)
        rest = [pool.submit(cache.memo, duck, ("k",), slow) for _ in range(7)]
        assert [f.result() for f in [first, *rest]] == [42] * 8
    assert calls == [1]


def test_cache_evicts_the_least_recently_used_series(duck: Store) -> None:
    duck.write_bars(bars_for(["AAPL", "BTCUSDT"]))
    cache = BarCache(max_rows=3500, ttl_s=1)
    cache.series(duck, "AAPL", "1m")  # 780 rows
    cache.series(duck, "BTCUSDT", "1m")  # 2880 rows: over budget, AAPL goes
    assert cache.peek(duck, "AAPL", "1m") is None
    assert cache.peek(duck, "BTCUSDT", "1m") is not None
    assert cache.series(duck, "BTCUSDT", "5m") is not None  # empty series are cheap
    small = BarCache(max_rows=100, ttl_s=1)
    assert small.series(duck, "AAPL", "1m") is None  # too long to cache …
    assert small.series(duck, "AAPL", "1m") is None  # … remembered without a reload
    assert BarCache(0, 1).series(duck, "AAPL", "1m") is None
    assert BarCache(0, 1).memo(duck, ("x",), lambda: 7) == 7
    cache.clear()
    assert cache.peek(duck, "BTCUSDT", "1m") is None


def test_small_values_are_remembered_with_the_bar_cache_off(duck: Store) -> None:
    """`max_rows` 0 turns off the bar cache, not the memo of the symbol list: a bars
    request that misses costs one store query, and a write is still seen at once."""
    off = BarCache(0, 60)
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    assert off.memo(duck, ("x",), compute) == 1
    assert off.memo(duck, ("x",), compute) == 1
    assert off.peek_memo(duck, ("x",)) == (True, 1)
    off.remember(duck, ("page",), b"{}", generation=duck.generation, weight=100)
    assert off.peek_memo(duck, ("page",)) == (False, None)  # pages weigh bars: not kept
    duck.write_bars(bars_for(["AAPL"]))
    assert off.memo(duck, ("x",), compute) == 2


def test_a_series_miss_reads_from_the_store_while_every_load_slot_is_taken(
    duck: Store,
) -> None:
    from marketlake.api.cache import MAX_LOADS

    duck.write_bars(bars_for(["AAPL"]))
    cache = BarCache(max_rows=10_000, ttl_s=60)
    for _ in range(MAX_LOADS):  # loads of other series in flight
        cache._loads.acquire()
    assert cache.series(duck, "AAPL", "1m") is None  # the caller reads its page itself
    assert cache.busy == 1
    assert cache.peek(duck, "AAPL", "1m") is None  # nothing was loaded
    for _ in range(MAX_LOADS):
        cache._loads.release()
    loaded = cache.series(duck, "AAPL", "1m")
    assert loaded is not None
    assert loaded.rows == 780


async def test_memory_limiter_refills_over_time() -> None:
    now = [0.0]
    limiter = MemoryRateLimiter(60, clock=lambda: now[0])
    for _ in range(60):
        await limiter.hit("a")
    with pytest.raises(RateLimitError) as caught:
        await limiter.hit("a")
    assert caught.value.retry_after == pytest.approx(1.0)
    now[0] += 1.0
    await limiter.hit("a")
    await limiter.close()


async def test_redis_limiter_lets_requests_through_when_redis_is_down() -> None:
    limiter = make_rate_limiter("redis://127.0.0.1:1/0", 1, "x:")
    assert isinstance(limiter, RedisRateLimiter)
    for _ in range(3):
        await limiter.hit("a")
    await limiter.close()


def test_serve_runs_uvicorn_with_the_app(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """One worker: uvicorn serves the bound socket while the discovery file names it;
    several workers: uvicorn's factory mode (PostgreSQL only)."""
    import uvicorn

    from marketlake.cli.serve import run_server
    from marketlake.store.holder import server_file_path

    db = f"duckdb:///{tmp_path / 'lake.duckdb'}"
    discovery = server_file_path(tmp_path / "lake.duckdb")
    served: list[tuple[Any, int, Any]] = []

    class FakeServer:
        def __init__(self, config: Any) -> None:
            self.config = config

        def run(self, sockets: list[Any]) -> None:
            # what other processes on this machine see while the server runs
            served.append((self.config, sockets[0].getsockname()[1], discovery.read_text()))

    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "Server", FakeServer)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    run_server(settings(store=db), host="127.0.0.1", port=0, log_format="console")
    run_server(settings(store="postgresql://db/x"), host="0.0.0.0", port=8124, workers=3)
    ((config, port, found),) = served
    assert config.app.title == "MarketLake API"
    assert config.access_log is False
    assert json.loads(found)["url"] == f"http://127.0.0.1:{port}"
    assert not discovery.exists()  # removed when the server stopped
    ((factory, many),) = calls
    assert factory == "marketlake.cli.serve:app_from_env"
    assert many["workers"] == 3
    assert many["factory"] is True


async def test_a_server_app_freezes_the_start_up_objects_out_of_the_collector(duck: Store) -> None:
    import gc

    from marketlake.api import create_app

    app = create_app(settings(), duck, freeze_gc=True)
    try:
        async with app.router.lifespan_context(app):
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_app_from_env_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from marketlake.api.app import app_from_env

    monkeypatch.setenv("MARKETLAKE_STORE", "duckdb:///:memory:")
    monkeypatch.setenv("MARKETLAKE_API_CORS_ORIGINS", '["http://x.example"]')
    app = app_from_env()
    assert app.state.ctx.settings.api_cors_origins == ["http://x.example"]
