"""A job whose process is SIGKILLed reads as ``interrupted`` with the rows it committed.

Real ``ingest`` processes on both stores; the CLI (`jobs list`, `jobs show`), the API
and ``--resume`` all see the dead job so, and the resumed run converges.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from marketlake.schema import utcnow
from marketlake.store import Store, open_store
from marketlake.store.liveness import is_dead, this_owner
from tests.api.server import running
from tests.conftest import PG
from tests.store.procs import ROOT, ingest

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
RANGE = ("2024-03-04", "2024-04-04")


def _cli(store_uri: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "marketlake", "--store", store_uri, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _kill_after_commits(process: subprocess.Popen[str], committed: object) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not committed():  # type: ignore[operator]
        time.sleep(0.001)  # the commits of a fast ingest span ~0.15 s: look often
    assert process.poll() is None, "the ingest ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def _check_interrupted(store_uri: str) -> tuple[str, int]:
    [listed] = json.loads(_cli(store_uri, "jobs", "list", "--json"))
    assert listed["status"] == "interrupted"
    shown = json.loads(_cli(store_uri, "jobs", "show", listed["id"], "--json"))
    assert shown["status"] == "interrupted"
    assert "stopped" in shown["error"]
    with open_store(store_uri) as store:
        stored = store.count_bars()
    assert 0 < stored < len(SYMBOLS) * 31 * 1440
    assert listed["rows"] == shown["summary"]["rows_committed"] == stored
    assert sum(shown["summary"]["committed"].values()) == stored
    return listed["id"], stored


def _resume_converges(store_uri: str, killed_id: str, clean: Store) -> None:
    process = ingest(store_uri, SYMBOLS, *RANGE, "--resume")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    with open_store(store_uri) as store:
        jobs = {j.id: j for j in store.list_jobs()}
        assert jobs[killed_id].status == "interrupted"
        # recorded so by --resume, not only read so
        [row] = store.select_rows("jobs", {"id": killed_id})
        assert row["status"] == "interrupted"
        [new] = [j for j in jobs.values() if j.id != killed_id]
        assert new.status == "succeeded"
        ordered = "SELECT * FROM bars ORDER BY symbol, timeframe, ts"
        reference = clean.query(ordered)
        assert store.query(ordered).cast(reference.schema).equals(reference)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """One uninterrupted run, the reference for the resumed ones."""
    uri = f"duckdb:///{tmp_path_factory.mktemp('clean')}/clean.duckdb"
    process = ingest(uri, SYMBOLS, *RANGE)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return open_store(uri)


@pytest.mark.slow
def test_a_killed_duckdb_ingest_is_interrupted_and_resumes(tmp_path: Path, clean: Store) -> None:
    uri = f"duckdb:///{tmp_path}/killed.duckdb"
    wal = tmp_path / "killed.duckdb.wal"
    process = ingest(uri, SYMBOLS, *RANGE)
    # the first symbol's commit (~105 kB of WAL each), not the last
    _kill_after_commits(process, lambda: wal.exists() and wal.stat().st_size > 100_000)
    killed_id, _ = _check_interrupted(uri)
    _resume_converges(uri, killed_id, clean)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_killed_postgres_ingest_is_interrupted_in_the_cli_and_the_api(
    pg: Store, tmp_path: Path, clean: Store
) -> None:
    uri = PG.connect()
    process = ingest(uri, SYMBOLS, *RANGE)
    _kill_after_commits(process, lambda: pg.count_bars() > 5_000)
    killed_id, stored = _check_interrupted(uri)
    with running(["--store", uri, "serve"], tmp_path / "serve.log") as (base, _):
        job = httpx.get(f"{base}/api/v1/jobs/{killed_id}").json()
        listed = httpx.get(f"{base}/api/v1/jobs").json()
    assert job["status"] == "interrupted"
    assert job["summary"]["rows_committed"] == stored
    assert [j["status"] for j in listed] == ["interrupted"]
    _resume_converges(uri, killed_id, clean)


def test_a_live_job_of_this_process_is_not_interrupted(store: Store) -> None:
    job = store.create_job("ingest", {})
    store.update_job(job.id, status="running")
    assert store.get_job(job.id).status == "running"
    assert store.get_job(job.id).owner == this_owner()
    assert store.reap_jobs() == []


def test_owners_that_are_gone_are_dead() -> None:
    now = utcnow()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host = socket.gethostname()
    assert is_dead(f"{host}:{child.pid}:", None, now)
    assert not is_dead(this_owner(), None, now)
    mine = this_owner().rsplit(":", 1)[0]
    assert is_dead(f"{mine}:1", None, now)  # same pid, another process start: reused
    assert not is_dead(None, None, now)
    from datetime import timedelta

    assert is_dead("elsewhere:1:1", now - timedelta(minutes=5), now)
    assert not is_dead("elsewhere:1:1", now - timedelta(seconds=5), now)


def test_the_heartbeat_refreshes_running_jobs(store: Store) -> None:
    from marketlake.store.liveness import Heartbeat

    job = store.create_job("ingest", {})
    store.update_job(job.id, status="running")
    before = store.get_job(job.id).heartbeat_at
    beat = Heartbeat(store._touch_jobs, every_s=0.05)
    beat.add(job.id)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and store.get_job(job.id).heartbeat_at == before:
        time.sleep(0.02)
    beat.stop()
    after = store.get_job(job.id).heartbeat_at
    assert before is not None
    assert after is not None
    assert after > before
