"""import-csv of a file above the one-transaction limit: written in resumable parts.

The limit is lowered to 1 MiB (MARKETLAKE_IMPORT_ONE_TRANSACTION_MIB) so that the file
stays small. A real import process is SIGKILLed part-way: the parts it wrote stay (as the
summary and the docs say), the job reads as interrupted, and running the same import
again converges to the rows of an uninterrupted import.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from marketlake.store import Store, open_store
from marketlake.tools.mirror import synthetic_source
from tests.conftest import PG
from tests.store.procs import ROOT

LIMIT = {"MARKETLAKE_IMPORT_ONE_TRANSACTION_MIB": "1"}


def _file(tmp_path: Path) -> Path:
    from datetime import UTC, datetime

    bars = synthetic_source(
        "BTCUSDT", "1m", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC)
    )
    path = tmp_path / "btc.csv"
    columns = ["ts", "open", "high", "low", "close", "volume"]
    with path.open("w") as out:
        out.write(",".join(columns) + "\n")
        for row in bars.select(columns).to_pylist():
            out.write(f"{row['ts'].isoformat()},{row['open']},{row['high']},{row['low']},")
            out.write(f"{row['close']},{row['volume']}\n")
    assert path.stat().st_size > 8 << 20
    return path


def _import(store_uri: str, path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "marketlake", "--store", store_uri, "import-csv", str(path)),
            *("--symbol", "BTCUSDT", "--timeframe", "1m", *extra),
        ],
        cwd=ROOT,
        env={**os.environ, **LIMIT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rows(store_uri: str) -> pa.Table:
    with open_store(store_uri) as store:
        return store.query("SELECT * FROM bars ORDER BY ts")


@pytest.mark.slow
@pytest.mark.postgres
def test_a_big_import_killed_part_way_is_completed_by_running_it_again(
    tmp_path: Path, pg: Store
) -> None:
    path = _file(tmp_path)
    clean = f"duckdb:///{tmp_path}/clean.duckdb"
    process = _import(clean, path, "--json")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    summary = json.loads(out)
    assert summary["in_parts"] is True
    assert any("written in parts" in note for note in summary["notes"])
    total = summary["inserted"]

    killed = PG.connect()
    process = _import(killed, path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and pg.count_bars() == 0:
        time.sleep(0.005)
    assert process.poll() is None, "the import ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    with open_store(killed) as store:
        written = store.count_bars("BTCUSDT", "1m")
        [job] = store.list_jobs()
    assert 0 < written < total  # the parts written stay, as documented
    assert job.status == "interrupted"

    process = _import(killed, path, "--json")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    again = json.loads(out)
    assert again["inserted"] == total - written
    assert again["duplicates"] == written
    reference = _rows(clean)
    assert _rows(killed).cast(reference.schema).equals(reference)


def test_a_file_within_the_limit_is_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "small.csv"
    path.write_text("ts,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,2,0.5,1.5,10\n")
    process = _import(f"duckdb:///{tmp_path}/s.duckdb", path, "--json")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    summary = json.loads(out)
    assert summary["in_parts"] is False
    assert not any("written in parts" in note for note in summary["notes"])
