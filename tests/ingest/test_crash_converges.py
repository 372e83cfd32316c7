"""SIGKILL of ``aggregate`` and ``copy`` part-way, then a rerun: the data of a clean run.

(``ingest`` is covered in test_cli.py and test_killed.py, ``import-csv`` in
test_csv_big.py, ``export`` in tests/store/test_lake_crash.py.)
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from marketlake.store import Store, open_store
from tests.conftest import PG
from tests.store.procs import ingest, marketlake

SYMBOLS = [f"C{i}USDT" for i in range(6)]
ORDERED = "SELECT * FROM bars ORDER BY symbol, timeframe, ts"


def _ok(process: subprocess.Popen[str]) -> None:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err


def _kill_when(process: subprocess.Popen[str], ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not ready():
        time.sleep(0.005)
    assert process.poll() is None, "the process ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def _bars(uri: str) -> pa.Table:
    with open_store(uri) as store:
        return store.query(ORDERED)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DuckDB store of 1-minute bars without roll-ups."""
    path = tmp_path_factory.mktemp("source") / "m.duckdb"
    _ok(
        ingest(
            f"duckdb:///{path}",
            SYMBOLS,
            "2024-01-01",
            "2024-04-01",
            env={"MARKETLAKE_ROLLUP_AFTER_INGEST": "false"},
        )
    )
    return path


@pytest.mark.slow
def test_a_killed_aggregate_rerun_converges(source: Path, tmp_path: Path) -> None:
    clean, killed = tmp_path / "clean.duckdb", tmp_path / "killed.duckdb"
    shutil.copy(source, clean)
    shutil.copy(source, killed)
    args = ("aggregate", "--from", "1m", "--to", "5m,1h,1d")
    _ok(marketlake(f"duckdb:///{clean}", *args))
    wal = tmp_path / "killed.duckdb.wal"
    _kill_when(
        marketlake(f"duckdb:///{killed}", *args),
        lambda: wal.exists() and wal.stat().st_size > 50_000,
    )
    _ok(marketlake(f"duckdb:///{killed}", *args))
    expected = _bars(f"duckdb:///{clean}")
    assert expected.num_rows > _bars(f"duckdb:///{source}").num_rows
    assert _bars(f"duckdb:///{killed}").equals(expected)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_killed_copy_rerun_converges(source: Path, pg: Store) -> None:
    uri = PG.connect()
    args = ("copy", "--from", f"duckdb:///{source}", "--to", uri)
    _kill_when(marketlake(uri, *args), lambda: pg.count_bars() > 0)
    assert pg.count_bars() > 0
    _ok(marketlake(uri, *args))
    expected = _bars(f"duckdb:///{source}")
    assert pg.query(ORDERED).cast(expected.schema).equals(expected)
