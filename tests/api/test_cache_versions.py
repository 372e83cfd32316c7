"""The bar cache on PostgreSQL: series versions, bumped by writers, invalidate it.

In-process tests drive :class:`BarCache` against two store objects (one reads, the
other writes, as two processes would); the last test runs a real ``marketlake
serve`` process and a writer process and checks the documented bound: a page
served holds every bar committed ``MARKETLAKE_API_CACHE_CHECK_MS`` before the
request. The TTL is an hour there, so only the version check can pass it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from marketlake.api.cache import BarCache
from marketlake.providers.synthetic import generate_bars
from marketlake.store import Store, open_store
from tests.api.server import running

pytestmark = pytest.mark.postgres

START = datetime(2024, 3, 4, tzinfo=UTC)


def _bars(symbol: str, minutes: int, offset: int = 0) -> object:
    begin = START + timedelta(minutes=offset)
    return generate_bars(symbol, "1m", begin, begin + timedelta(minutes=minutes))


def test_writes_and_deletes_bump_the_series_version_in_their_transaction(pg: Store) -> None:
    key = ("BTCUSDT", "1m")
    assert pg.versioned
    assert pg.series_versions([key]) == {}
    pg.write_bars(_bars("BTCUSDT", 10))
    assert pg.series_versions([key]) == {key: 1}
    pg.write_bars(_bars("BTCUSDT", 10))  # duplicates only: nothing changed, no bump
    assert pg.series_versions([key]) == {key: 1}

    def rolled_back() -> None:
        with pg.transaction():
            pg.write_bars(_bars("BTCUSDT", 5, offset=10))
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        rolled_back()
    assert pg.series_versions([key]) == {key: 1}  # the bump went with the bars
    pg.write_bars(_bars("BTCUSDT", 5, offset=10))
    pg.write_bars(_bars("ETHUSDT", 5))
    assert pg.series_versions([key, ("ETHUSDT", "1m"), ("SPY", "1m")]) == {
        key: 2,
        ("ETHUSDT", "1m"): 1,
    }
    assert pg.delete_bars("BTCUSDT") == 15
    assert pg.series_versions([key]) == {key: 3}


def test_a_write_by_another_store_object_is_seen_after_one_check(pg: Store) -> None:
    pg.write_bars(_bars("BTCUSDT", 10))
    other = open_store(pg.uri)  # another process's connection pool
    cache = BarCache(max_rows=10_000, ttl_s=3600, check_s=30.0)
    try:
        first = cache.series(pg, "BTCUSDT", "1m")
        assert first is not None
        assert first.rows == 10
        cache.check_versions(pg)
        assert cache.peek(pg, "BTCUSDT", "1m") is first  # unchanged: still served
        other.write_bars(_bars("BTCUSDT", 3, offset=10))
        assert cache.peek(pg, "BTCUSDT", "1m") is first  # not checked yet (bound: 30 s here)
        cache.check_versions(pg)
        assert cache.peek(pg, "BTCUSDT", "1m") is None  # stale at once after the check
        again = cache.series(pg, "BTCUSDT", "1m")
        assert again is not None
        assert again.rows == 13
    finally:
        cache.close()
        other.close()


def test_a_confirmation_older_than_the_bound_is_checked_before_serving(pg: Store) -> None:
    pg.write_bars(_bars("BTCUSDT", 10))
    other = open_store(pg.uri)
    cache = BarCache(max_rows=10_000, ttl_s=3600, check_s=0.05)
    try:
        assert cache.series(pg, "BTCUSDT", "1m") is not None
        other.write_bars(_bars("BTCUSDT", 1, offset=10))
        time.sleep(0.1)  # the load's confirmation is now older than the bound
        assert cache.peek(pg, "BTCUSDT", "1m") is None  # the event loop never waits for a query
        checks = cache.checks
        found = cache.series(pg, "BTCUSDT", "1m")  # checks (in the request's thread), reloads
        assert found is not None
        assert found.rows == 11
        assert cache.checks > checks
    finally:
        cache.close()
        other.close()


def test_an_unchanged_series_is_not_reloaded(pg: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    pg.write_bars(_bars("BTCUSDT", 10))
    cache = BarCache(max_rows=10_000, ttl_s=0.01, check_s=30.0)  # a TTL that would reload
    loads: list[str] = []
    real = type(pg).read_bars

    def counting(self: Store, *args: object, **kwargs: object) -> object:
        loads.append("read")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(type(pg), "read_bars", counting)
    try:
        first = cache.series(pg, "BTCUSDT", "1m")
        for _ in range(3):
            time.sleep(0.02)
            cache.check_versions(pg)
            assert cache.series(pg, "BTCUSDT", "1m") is first
        assert loads == ["read"]
    finally:
        cache.close()


def test_check_off_falls_back_to_the_ttl(pg: Store) -> None:
    pg.write_bars(_bars("BTCUSDT", 10))
    cache = BarCache(max_rows=10_000, ttl_s=3600, check_s=0.0)
    try:
        first = cache.series(pg, "BTCUSDT", "1m")
        assert not cache.versioned(pg)
        open_store(pg.uri).write_bars(_bars("BTCUSDT", 1, offset=10))
        assert cache.series(pg, "BTCUSDT", "1m") is first  # the TTL rules: stale for an hour
    finally:
        cache.close()


WRITER = """
import sys
from datetime import UTC, datetime, timedelta
from marketlake.providers.synthetic import generate_bars
from marketlake.store import open_store

store = open_store(sys.argv[1])
start = datetime(2024, 3, 4, tzinfo=UTC)
for line in sys.stdin:
    k = int(line)
    at = start + timedelta(minutes=k)
    store.write_bars(generate_bars("BTCUSDT", "1m", at, at + timedelta(minutes=1)))
    print(k, flush=True)  # after the commit
store.close()
"""

CHECK_MS = 200


def _hits(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = re.search(r'marketlake_bar_cache_lookups_total\{result="hit"\} ([\d.e+]+)', text)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
def test_a_server_shows_bars_another_process_committed_within_the_bound(
    pg: Store, tmp_path: Path
) -> None:
    from marketlake.schema import Instrument

    pg.add_instrument(Instrument(symbol="BTCUSDT", asset_class="crypto", timezone="UTC"))
    pg.write_bars(_bars("BTCUSDT", 100))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, pg.uri],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    env = {
        "MARKETLAKE_API_CACHE_TTL_S": "3600",  # only the version check can show new bars
        "MARKETLAKE_API_CACHE_CHECK_MS": str(CHECK_MS),
        "MARKETLAKE_API_RATE_LIMIT_PER_MINUTE": "0",
        "MARKETLAKE_API_ACCESS_LOG": "false",
    }
    url = "/api/v1/bars/BTCUSDT?timeframe=1m&limit=1000"
    try:
        with (
            running(["--store", pg.uri, "serve"], tmp_path / "serve.log", env=env) as (base, _),
            httpx.Client(base_url=base, timeout=30) as client,
        ):
            assert client.get(url).json()["count"] == 100  # loads the series into the cache
            hits = _hits(base)
            for k in range(100, 105):
                assert writer.stdin is not None
                assert writer.stdout is not None
                writer.stdin.write(f"{k}\n")
                writer.stdin.flush()
                assert writer.stdout.readline().strip() == str(k)  # committed by now
                time.sleep(CHECK_MS / 1000)  # the bound: any request from now on shows it
                for _ in range(3):
                    page = client.get(url).json()
                    assert page["count"] == k + 1, f"bar {k} committed {CHECK_MS} ms ago missing"
                    assert page["bars"][-1]["ts"].startswith(
                        (START + timedelta(minutes=k)).strftime("%Y-%m-%dT%H:%M")
                    )
            assert _hits(base) > hits  # pages came from the cache, not all from the store
    finally:
        try:
            writer.communicate(timeout=30)  # closes its stdin: the writer ends
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.communicate()
