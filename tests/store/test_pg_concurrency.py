"""Concurrent writers and dropped connections: the table ends with exactly the union."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest

from marketlake.errors import StoreError
from marketlake.store import Store, WriteResult, open_store
from marketlake.store.postgres import PostgresStore
from tests.conftest import PG, bars_for

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]


def _keys(store: Store) -> tuple[int, int]:
    row = store.query(
        "SELECT count(*) AS n, count(DISTINCT (symbol, timeframe, ts)) AS k FROM bars"
    ).to_pylist()[0]
    return int(row["n"]), int(row["k"])


@pytest.mark.slow
def test_two_processes_writing_overlapping_bars_end_with_exactly_the_union(
    pg: Store, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    jobs = [("2024-03-04", "2024-03-06", "240"), ("2024-03-05", "2024-03-07", "197")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.store.pg_writer", PG.connect(), lo, hi, step, str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for lo, hi, step in jobs
    ]
    time.sleep(0.5)
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    assert all(err == "" for _, err in outputs)
    results = [WriteResult(**json.loads(out)) for out, _ in outputs]
    union = 3 * 1440 * 2  # 3 days, 2 symbols, 1440 minutes a day
    overlap = 1 * 1440 * 2
    assert _keys(pg) == (union, union)
    assert sum(r.inserted for r in results) == union
    assert sum(r.duplicates for r in results) == overlap
    assert sum(r.conflicts for r in results) == 0


def test_writers_racing_without_series_locks_are_saved_by_the_retry(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars = bars_for("BTCUSDT", start="2024-03-04", end="2024-03-05")
    monkeypatch.setattr(PostgresStore, "_lock_series", lambda *args: None)
    batches = [bars.slice(i, 400) for i in range(0, 1440, 100)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(pg.write_bars, batches))
    assert _keys(pg) == (1440, 1440)
    assert sum(r.inserted for r in results) == 1440
    assert sum(r.inserted + r.duplicates for r in results) == sum(b.num_rows for b in batches)


def _terminate_copy(store_uri: str, app: str, done: threading.Event) -> list[bool]:
    """Kill the connection of ``app`` as soon as it is sending bars with COPY."""
    killed: list[bool] = []
    with open_store(store_uri) as watcher:
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            rows = watcher.query(
                "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity "
                "WHERE application_name = ? AND query LIKE 'COPY bars (%'",
                [app],
            ).to_pylist()
            if rows:
                killed += [bool(r["killed"]) for r in rows]
                return killed
            time.sleep(0.005)
    return killed


def _big_batch() -> pa.Table:
    return bars_for(["BTCUSDT", "ETHUSDT"], start="2024-03-01", end="2024-04-15")


@pytest.mark.slow
def test_a_connection_killed_mid_copy_is_retried_and_leaves_one_copy_of_each_bar(
    pg: Store,
) -> None:
    app = f"ml_fault_{uuid.uuid4().hex[:8]}"
    bars = _big_batch()
    with open_store(f"{PG.connect()}&application_name={app}") as writer:
        done = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            killer = pool.submit(_terminate_copy, PG.connect(), app, done)
            result = writer.write_bars(bars)
            done.set()
            assert killer.result() == [True]
    assert result == WriteResult(inserted=bars.num_rows)
    assert _keys(pg) == (bars.num_rows, bars.num_rows)


@pytest.mark.slow
def test_without_retries_a_killed_write_fails_clearly_and_leaves_nothing(pg: Store) -> None:
    app = f"ml_fault_{uuid.uuid4().hex[:8]}"
    bars = _big_batch()
    pg.write_bars(bars.slice(0, 10))
    with open_store(f"{PG.connect()}&application_name={app}&write_retries=0") as writer:
        done = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            killer = pool.submit(_terminate_copy, PG.connect(), app, done)
            with pytest.raises(
                StoreError,
                match=r"writing 129,600 bars failed 1 times \(.*\); "
                "nothing of this batch was written",
            ):
                writer.write_bars(bars)
            done.set()
            assert killer.result() == [True]
    assert _keys(pg) == (10, 10)
