"""Parameter grids: parsing, invalid combinations, ranking, and runs on worker processes."""

from __future__ import annotations

from datetime import UTC, datetime

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
