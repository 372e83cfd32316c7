"""Dropped PostgreSQL connections (``pg_terminate_backend``): no stall, no partial job.

Real processes (an ingest, an API server) whose connections are terminated by the
server while they work. Every connection of the process under test carries an
``application_name`` of its own, so that nothing else on the shared server is touched.
The time bounds below are correctness bounds (the old pool waited 30 s), not benchmarks.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from marketlake.store import Store, open_store
from tests.api.server import running
from tests.conftest import PG
from tests.store.procs import ingest

pytestmark = pytest.mark.postgres
STALL_S = 5.0  # far above any answer of a healthy store, far below the old 30 s stall


def _named_uri() -> tuple[str, str]:
    app = f"mltest_{uuid.uuid4().hex[:10]}"
    return f"{PG.connect()}&application_name={app}", app


def _terminate(app: str) -> int:
    with psycopg.connect(PG.server, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            [app],
        ).fetchone()
    return int(row[0]) if row else 0


class Terminator(threading.Thread):
    """Terminate the connections of ``app`` ``times`` times (each time at least one),
    ``every_s`` apart, from when ``ready()`` holds."""

    def __init__(
        self, app: str, times: int, every_s: float, ready: Callable[[], bool] = lambda: True
    ) -> None:
        super().__init__(daemon=True)
        self.app, self.times, self.every_s, self.ready = app, times, every_s, ready
        self.killed: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            if len(self.killed) == self.times:
                return
            found = _terminate(self.app) if self.killed or self.ready() else 0
            if found:
                self.killed.append(found)
                self.stop.wait(self.every_s)
            else:
                time.sleep(0.005)


def test_a_query_after_every_pooled_connection_was_terminated_does_not_wait() -> None:
    uri, app = _named_uri()
    with open_store(uri + "&pool_min=8&pool_max=8") as store:
        with ThreadPoolExecutor(8) as pool:  # eight connections in the pool, all used once
            list(pool.map(lambda _: store.query("SELECT pg_sleep(0.05) AS x"), range(8)))
        assert _terminate(app) >= 8
        began = time.monotonic()
        assert store.list_instruments() == []
        assert time.monotonic() - began < STALL_S
        with store.transaction():  # the pool is whole again
            assert store.schema_version() > 0


def test_a_transaction_that_loses_its_connection_runs_again(pg: Store) -> None:
    uri, app = _named_uri()
    runs: list[int] = []
    with open_store(uri) as store:

        def work() -> int:
            runs.append(1)
            store.ensure_instruments(["AAA"])
            if len(runs) == 1:
                _terminate(app)
            return store.execute("UPDATE instruments SET name = 'x' WHERE symbol = 'AAA'")

        assert store.atomically(work) == 1
    assert len(runs) == 2
    assert pg.instrument("AAA").name == "x"


@pytest.mark.slow
def test_an_ingest_whose_connections_are_terminated_eight_times_finishes(pg: Store) -> None:
    symbols = ("BTCUSDT", "ETHUSDT", "AAPL", "MSFT")
    uri, app = _named_uri()
    # from the first bars written on: the store is open and the job is running
    terminator = Terminator(app, times=8, every_s=0.15, ready=lambda: pg.count_bars() > 0)
    process = ingest(uri, list(symbols), "2024-03-04", "2024-04-04", "--concurrency", "2")
    terminator.start()
    _, err = process.communicate(timeout=300)
    terminator.stop.set()
    terminator.join()
    assert process.returncode == 0, err
    assert len(terminator.killed) == 8, terminator.killed
    [job] = pg.list_jobs(kind="ingest")
    assert job.status == "succeeded", job
    written = {s["symbol"]: s for s in job.summary["symbols"]}
    assert sorted(written) == sorted(symbols)
    for symbol in symbols:
        stored = pg.count_bars(symbol, "1m")
        assert stored == written[symbol]["fetched"] > 0
        keys = pg.query(
            "SELECT count(DISTINCT ts) AS n FROM bars WHERE symbol = ? AND timeframe = '1m'",
            [symbol],
        ).to_pylist()[0]["n"]
        assert keys == stored


@pytest.mark.slow
def test_api_traffic_through_terminated_connections_gets_every_answer_quickly(
    pg: Store, tmp_path: Path
) -> None:
    pg.ensure_instruments(["AAA", "BBB"])
    uri, app = _named_uri()
    with running(["--store", uri, "serve"], tmp_path / "serve.log") as (base, _):
        terminator = Terminator(app, times=8, every_s=0.3)
        terminator.start()
        results: list[tuple[str, int, float]] = []

        def traffic(path: str) -> None:
            with httpx.Client(base_url=f"{base}/api/v1", timeout=60) as client:
                while terminator.is_alive():
                    began = time.monotonic()
                    status = client.get(path).status_code
                    results.append((path, status, time.monotonic() - began))

        paths = ["/ready", "/instruments", "/instruments/AAA", "/jobs"]
        with ThreadPoolExecutor(len(paths)) as pool:
            list(pool.map(traffic, paths))
        terminator.join()
    assert len(terminator.killed) == 8
    assert len(results) > 40
    assert [r for r in results if r[1] != 200] == []
    slowest = max(seconds for _, _, seconds in results)
    assert slowest < STALL_S, slowest
