"""An export SIGKILLed part-way leaves no readable half; a rerun converges without compact.

A real ``export`` process is killed while it writes; its files are invisible to
``import-lake`` (no manifest lists them) and to any reader globbing ``*.parquet``
(hidden ``.tmp`` names). Running the export again deletes them and ends with exactly
the lake of an uninterrupted export: the same rows, no key twice.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from marketlake.store import Store, open_store
from marketlake.store.lake import BAR_PARTITIONS, import_lake
from tests.conftest import bars_for
from tests.store.procs import ROOT, ingest


def _export(store_uri: str, lake: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "marketlake", "--store", store_uri, "export", "--to", str(lake)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lake_rows(lake: Path) -> pa.Table:
    """Every bar of the lake as any engine reads it (hive layout, every *.parquet)."""
    data = ds.dataset(
        lake / "bars",
        format="parquet",
        partitioning=ds.partitioning(BAR_PARTITIONS, flavor="hive"),
    )
    table = data.to_table()
    return table.sort_by([("timeframe", "ascending"), ("symbol", "ascending"), ("ts", "ascending")])


@pytest.mark.slow
def test_a_killed_export_is_invisible_and_a_rerun_converges(tmp_path: Path) -> None:
    store_uri = f"duckdb:///{tmp_path}/m.duckdb"
    symbols = [f"S{i:02d}USDT" for i in range(8)]
    process = ingest(store_uri, symbols, "2023-11-01", "2024-03-01")
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err

    clean, lake = tmp_path / "clean", tmp_path / "lake"
    process = _export(store_uri, clean)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    reference = _lake_rows(clean)

    victim = _export(store_uri, lake)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None:
        if len(list(lake.rglob(".part-*.tmp"))) >= 3:
            break
        time.sleep(0.002)
    assert victim.poll() is None, "the export ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert list(lake.rglob(".part-*.tmp"))  # it was killed while writing
    assert not list((lake / "bars").rglob("*.parquet"))  # nothing a reader would take

    with open_store("duckdb:///:memory:") as scratch:
        summary = import_lake(scratch, lake)
        assert (summary.bars, summary.files, scratch.count_bars()) == (0, 0, 0)

    process = _export(store_uri, lake)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert not list(lake.rglob("*.tmp"))
    rows = _lake_rows(lake)
    assert rows.equals(reference)
    keys = rows.select(["timeframe", "symbol", "ts"]).group_by(["timeframe", "symbol", "ts"])
    assert keys.aggregate([]).num_rows == rows.num_rows


def test_parts_no_manifest_lists_are_skipped_then_deleted_and_old_lakes_kept(
    duck: Store, tmp_path: Path
) -> None:
    from marketlake.store.lake import MANIFESTS, export_lake

    duck.write_bars(bars_for("AAPL", start="2024-03-04", end="2024-03-05"))
    export_lake(duck, tmp_path)
    [committed] = (tmp_path / "bars").rglob("part-*.parquet")
    # a lake written before manifests existed: its files stay committed
    for manifest in (tmp_path / MANIFESTS).iterdir():
        manifest.unlink()
    (tmp_path / MANIFESTS).rmdir()
    stray = committed.with_name("part-29990101T000000000000-deadbeef-00000.parquet")
    stray.write_bytes(committed.read_bytes())  # as if renamed by an export killed then
    export_lake(duck, tmp_path)  # lists both old files as committed, adds its own
    assert len(list((tmp_path / "bars").rglob("part-*.parquet"))) == 3
    with open_store("duckdb:///:memory:") as scratch:
        assert import_lake(scratch, tmp_path).files == 3

    # an export killed between its renames and its manifest: a visible, unlisted part
    late = committed.with_name("part-29990101T000000000001-deadbeef-00000.parquet")
    late.write_bytes(committed.read_bytes())
    with open_store("duckdb:///:memory:") as scratch:
        assert import_lake(scratch, tmp_path).files == 3  # skipped
    export_lake(duck, tmp_path)
    assert not late.exists()  # deleted by the next export
