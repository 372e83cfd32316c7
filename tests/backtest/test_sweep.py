"""Parameter grids: parsing, invalid combinations, ranking, and runs on worker processes."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from marketlake.backtest import BacktestConfig, get_strategy, run
from marketlake.backtest.data import split_symbols, synthetic_bars
from marketlake.backtest.sweep import combinations, parse_grid, run_sweep, sort_rows
from marketlake.errors import InputError
from tests.backtest.helpers import goog


def test_ranges_are_inclusive_and_typed() -> None:
    grid = parse_grid("sma_cross", ["fast=5:50:5", "slow=20,200"])
    assert grid == {"fast": [5, 10, 15, 20, 25, 30, 35, 40, 45, 50], "slow": [20, 200]}
    assert parse_grid("bollinger_breakout", ["k=1.5:2.5:0.5"]) == {"k": [1.5, 2.0, 2.5]}
    assert parse_grid("rsi_reversion", ["period=7"]) == {"period": [7]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fats=1:2:1", "unknown parameter 'fats' for strategy sma_cross; valid parameters: fast"),
        ("fast", "write NAME=VALUE, NAME=START:STOP:STEP"),
        ("fast=1:5", "a range is START:STOP:STEP"),
        ("fast=5:1:1", "need STEP > 0 and STOP >= START"),
        ("fast=1:5:0", "need STEP > 0"),
        ("fast=a:b:c", "must be numbers"),
        ("fast=1.5", "must be an integer"),
        ("fast=1:1000000:1", "use a coarser step"),
    ],
)
def test_bad_grid_specs_say_how_to_write_them(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_grid("sma_cross", [spec])


def test_a_grid_with_too_many_combinations_is_refused() -> None:
    with pytest.raises(InputError, match="combinations; at most 100,000"):
        parse_grid("rsi_reversion", ["period=2:100:1", "lower=1:50:1", "upper=51:99:1"])


def test_invalid_combinations_are_skipped_with_the_reason() -> None:
    valid, skipped = combinations("sma_cross", {"fast": [10, 30], "slow": [20, 40]})
    assert valid == [{"fast": 10, "slow": 20}, {"fast": 10, "slow": 40}, {"fast": 30, "slow": 40}]
    assert skipped == [
        {"fast": 30, "slow": 20, "reason": "sma_cross: fast (30) must be smaller than slow (20)"}
    ]


def test_each_row_has_the_statistics_of_that_single_backtest() -> None:
    bars = [goog()]
    result = run_sweep(
        bars,
        "sma_cross",
        {"fast": [5, 10], "slow": [20, 3000]},
        BacktestConfig(commission_bps=10),
        jobs=1,
    )
    assert [(r["fast"], r["slow"]) for r in result.rows] == [(5, 20), (10, 20)]
    single = run(
        bars, get_strategy("sma_cross", {"fast": 10, "slow": 20}), BacktestConfig(commission_bps=10)
    )
    assert result.rows[1] == {"fast": 10, "slow": 20, **single.stats}
    assert [s["slow"] for s in result.skipped] == [3000, 3000]
    assert "needs at least 3001 bars" in result.skipped[0]["reason"]


def test_progress_is_reported_after_each_combination() -> None:
    seen: list[tuple[int, int]] = []
    run_sweep(
        [goog()],
        "rsi_reversion",
        {"period": [7, 14, 21]},
        jobs=1,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_a_grid_where_nothing_can_run_is_an_error() -> None:
    with pytest.raises(InputError, match=r"no valid parameter combination.*fast \(50\)"):
        run_sweep([goog()], "sma_cross", {"fast": [50], "slow": [20]}, jobs=1)
    with pytest.raises(InputError, match=r"every combination failed, e\.g\. .*needs at least"):
        run_sweep([goog()], "sma_cross", {"slow": [5000]}, jobs=1)
    with pytest.raises(InputError, match="unknown strategy"):
        run_sweep([goog()], "nope", {}, jobs=1)


def test_rows_are_ranked_best_first_with_undefined_values_last() -> None:
    rows = [{"sharpe": 0.5}, {"sharpe": None}, {"sharpe": 1.5}, {"sharpe": -1.0}]
    assert [r["sharpe"] for r in sort_rows(rows, "sharpe")] == [1.5, 0.5, -1.0, None]
    assert [r["sharpe"] for r in sort_rows(rows, "sharpe", ascending=True)] == [
        -1.0,
        0.5,
        1.5,
        None,
    ]
    with pytest.raises(InputError, match="cannot sort by 'sharp'; use one of: start, end"):
        sort_rows(rows, "sharp")


@pytest.mark.slow
def test_worker_processes_give_the_same_rows_as_one_process() -> None:
    """Spawned workers receive the bars once and return rows in grid order."""
    bars = split_symbols(
        synthetic_bars(
            ["AAPL"], "1h", datetime(2023, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)
        )
    )
    grid = {"fast": [5, 10, 20], "slow": [30, 60]}
    here = run_sweep(bars, "sma_cross", grid, jobs=1)
    there = run_sweep(bars, "sma_cross", grid, jobs=2)
    assert there.rows == here.rows


# -- streamed sweeps ------------------------------------------------------------------------


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _stream_bars() -> list[Any]:
    from marketlake.backtest.data import Bars

    rng = np.random.default_rng(9)
    n = 3_000
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    ts = 1_704_067_200_000_000 + np.arange(n, dtype=np.int64) * 3_600_000_000
    return [Bars("X", ts, close, close * 1.002, close * 0.998, close, np.ones(n))]


def test_streamed_sweep_writes_every_row_and_equals_the_in_memory_one(tmp_path: Path) -> None:
    from marketlake.backtest.sweep import run_sweep, stream_sweep

    bars = _stream_bars()
    grid = {"fast": [3, 5, 8, 13], "slow": [5, 21, 34]}
    out = tmp_path / "rows.csv"
    streamed = stream_sweep(
        bars, "sma_cross", grid, BacktestConfig(fractional=True), output=out, keep=3, jobs=1
    )
    memory = run_sweep(bars, "sma_cross", grid, BacktestConfig(fractional=True), jobs=1)
    rows = _read(out)
    assert streamed.total == 12
    assert streamed.skipped == len(memory.skipped) == 3  # fast >= slow
    assert len(rows) == len(memory.rows) == 9
    by_params = {(r["fast"], r["slow"]): r for r in memory.rows}
    for row in rows:
        ref = by_params[(int(row["fast"]), int(row["slow"]))]
        assert float(row["final_equity"]) == pytest.approx(ref["final_equity"])
    assert [r["combo"] for r in streamed.top] == [
        r["combo"] for r in sorted(
            ({**r, "combo": 3 * grid["fast"].index(r["fast"]) + grid["slow"].index(r["slow"])}
             for r in memory.rows if r["sharpe"] is not None),
            key=lambda r: -r["sharpe"],
        )[:3]
    ]  # fmt: skip


def test_streamed_sweep_refuses_to_overwrite_and_resumes_what_is_missing(tmp_path: Path) -> None:
    from marketlake.backtest.sweep import stream_sweep

    bars = _stream_bars()
    grid = {"fast": [3, 5, 8], "slow": [21, 34]}
    out = tmp_path / "rows.csv"
    stream_sweep(bars, "sma_cross", grid, output=out, jobs=1, resume=False)
    full = out.read_text().splitlines()
    # as if killed: the last two rows are lost and a third was cut mid-line
    out.write_text("\n".join(full[:-3]) + "\n" + full[-3][:7])
    with pytest.raises(InputError, match="add --resume"):
        stream_sweep(bars, "sma_cross", grid, output=out, jobs=1)
    again = stream_sweep(bars, "sma_cross", grid, output=out, jobs=1, resume=True)
    assert again.resumed == 3
    assert again.done == 6
    rows = _read(out)
    assert sorted(int(r["combo"]) for r in rows) == list(range(6))
    with pytest.raises(InputError, match=r"writes \.csv"):
        stream_sweep(bars, "sma_cross", grid, output=tmp_path / "x.parquet", jobs=1)


@pytest.mark.slow
def test_a_killed_streamed_sweep_resumes_to_the_same_rows(tmp_path: Path) -> None:
    """SIGKILL a real `marketlake backtest sweep --output`, then --resume: every combination
    appears once and the rows equal an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    exe = str(Path(sys.executable).parent / "marketlake")
    common = [
        exe, "--store", f"duckdb:///{tmp_path}/ml.duckdb", "backtest", "sweep",
        "-s", "sma_cross", "--symbol", "BTCUSDT", "-t", "1h", "--synthetic",
        "--start", "2023-01-01", "--end", "2024-01-01", "--fractional",
        "-p", "fast=2:40:1", "-p", "slow=45:60:1", "--jobs", "2", "--no-save", "--json",
    ]  # fmt: skip
    out = tmp_path / "killed.csv"
    proc = subprocess.Popen([*common, "-o", str(out)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 20_000):
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children()
    assert len(workers) >= 2  # the spawn pool (and its resource tracker)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # the pool's workers notice their parent is gone and leave: no orphans behind a kill
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == [], [p.pid for p in alive]
    before = out.read_text().count("\n") - 1
    assert 0 < before < 39 * 16
    done = subprocess.run([*common, "-o", str(out), "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    whole = tmp_path / "whole.csv"
    ref = subprocess.run([*common, "-o", str(whole)], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    got = {r["combo"]: r for r in _read(out)}
    expected = {r["combo"]: r for r in _read(whole)}
    assert len(got) == len(expected) == 39 * 16
    assert len(_read(out)) == len(got)  # no combination twice
    for combo, row in expected.items():
        assert got[combo]["final_equity"] == row["final_equity"]
