"""Walk-forward optimisation: windows, no look-ahead, stitching, the CLI."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from marketlake.backtest import strategies
from marketlake.backtest.data import Bars, FloatArray
from marketlake.backtest.engine import BacktestConfig
from marketlake.backtest.engine import run as run_single
from marketlake.backtest.strategies import SmaCross, Strategy, param
from marketlake.backtest.walkforward import make_windows, walk_forward
from marketlake.errors import InputError
from tests.backtest.test_cli import call

HOUR = 3_600_000_000
T0 = 1_704_067_200_000_000  # 2024-01-01


@dataclass(frozen=True)
class Oracle(Strategy):
    """long=1: always long; long=0: always flat."""

    name: ClassVar[str] = "oracle"
    long: int = param(0, "1 to hold the symbol, 0 to stay flat")

    def signals(self, bars: Bars) -> FloatArray:
        return np.full(len(bars), float(self.long))


def _bars(close: np.ndarray[Any, Any], symbol: str = "X") -> Bars:
    ts = T0 + np.arange(len(close), dtype=np.int64) * HOUR
    return Bars(symbol, ts, close, close * 1.001, close * 0.999, close, np.ones(len(close)))


def _slice_rows(one: Bars, a: int, b: int) -> Bars:
    return Bars(
        one.symbol, one.ts[a:b], one.open[a:b], one.high[a:b], one.low[a:b],
        one.close[a:b], one.volume[a:b],
    )  # fmt: skip


@pytest.fixture
def oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(strategies.STRATEGIES, "oracle", Oracle)


@pytest.mark.parametrize("anchor", ["rolling", "anchored"])
def test_windows_tile_the_end_of_the_data(anchor: Any) -> None:
    steps = make_windows(1000, 4, 3.0, anchor)
    assert [s.oos_end for s in steps][-1] == 1000
    for prev, nxt in itertools.pairwise(steps):
        assert prev.oos_end == nxt.is_end  # OOS segments are consecutive
    for s in steps:
        assert s.is_start < s.is_end < s.oos_end
        assert (
            (s.is_start == 0) if anchor == "anchored" else (s.is_end - s.is_start == 426)
        )  # 3 × (1000 // 7)
    with pytest.raises(InputError, match="too few"):
        make_windows(10, 5, 3.0, "rolling")


def test_a_parameter_good_only_out_of_sample_is_never_chosen(oracle: None) -> None:
    # falling prices everywhere except in the last window's OOS, where they rise a lot
    n = 1200
    steps = make_windows(n, 3, 3.0, "rolling")
    drift = np.full(n, -0.001)
    drift[steps[-1].is_end :] = 0.008
    close = 100 * np.exp(np.cumsum(drift))
    bars = [_bars(close)]
    result = walk_forward(
        bars,
        "oracle",
        {"long": [0, 1]},
        BacktestConfig(fractional=True),
        windows=3,
        jobs=1,
        objective="total_return_pct",
    )
    assert [w.params["long"] for w in result.windows] == [0, 0, 0]
    # with the whole history in sight (a look-ahead), long=1 would have won
    full = {k: run_single(bars, Oracle(long=k), BacktestConfig(fractional=True)) for k in (0, 1)}
    assert full[1].stats["total_return_pct"] > full[0].stats["total_return_pct"]
    # the last OOS segment stayed flat: its equity never moved
    last = result.windows[-1].out_of_sample
    assert last["total_return_pct"] == pytest.approx(0.0)


def test_oos_equity_is_stitched_and_trades_only_oos_bars() -> None:
    rng = np.random.default_rng(5)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 3000)))
    bars = [_bars(close)]
    grid = {"fast": [5, 10], "slow": [20, 40]}
    result = walk_forward(bars, "sma_cross", grid, windows=4, train_ratio=2.0, jobs=1)
    steps = make_windows(3000, 4, 2.0, "rolling")
    assert result.ts[0] == bars[0].ts[steps[0].is_end]
    assert len(result.ts) == 3000 - steps[0].is_end
    assert np.all(np.diff(result.ts) > 0)
    # each segment starts where the previous ended
    finals = [w.out_of_sample["final_equity"] for w in result.windows]
    starts = [w.out_of_sample["initial_cash"] for w in result.windows]
    assert starts[0] == 10_000
    assert starts[1:] == pytest.approx(finals[:-1])
    assert result.stats["final_equity"] == pytest.approx(finals[-1])
    # the OOS of a window equals a backtest of its parameters over IS+OOS, traded from the
    # split on: signals before the split are history only
    w = result.windows[1]
    step = steps[1]
    history = _slice_rows(bars[0], step.is_start, step.oos_end)
    signals = SmaCross(**w.params).signals(history)  # type: ignore[arg-type]
    oos = _slice_rows(bars[0], step.is_end, step.oos_end)

    @dataclass(frozen=True)
    class Given(Strategy):
        name: ClassVar[str] = "given"

        def signals(self, bars: Bars) -> FloatArray:
            return signals[-len(bars) :]

    expected = run_single([oos], Given(), BacktestConfig(cash=starts[1]))
    assert w.out_of_sample["final_equity"] == pytest.approx(expected.stats["final_equity"])
    assert w.out_of_sample["trades"] == expected.stats["trades"]
    table = result.windows_table()
    assert table.num_rows == 4
    assert {"param_fast", "param_slow", "is_sharpe", "oos_sharpe"} <= set(table.column_names)
    [fast, slow] = result.stability()
    assert (fast["parameter"], slow["parameter"]) == ("fast", "slow")
    assert len(fast["chosen"]) == 4
    assert 0 < fast["share_pct"] <= 100


def test_bad_objective_and_grid_are_one_clear_error() -> None:
    bars = [_bars(np.linspace(100, 120, 500))]
    with pytest.raises(InputError, match="cannot sort by"):
        walk_forward(bars, "sma_cross", {"fast": [5]}, objective="luck", jobs=1)
    with pytest.raises(InputError, match="unknown strategy"):
        walk_forward(bars, "nope", {"fast": [5]}, jobs=1)


def test_cli_walk_forward_prints_windows_and_writes_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = [
        "backtest", "walk-forward", "-s", "sma_cross", "--symbol", "BTCUSDT", "-t", "1h",
        "--synthetic", "--start", "2024-01-01", "--end", "2024-04-01",
        "-p", "fast=5,10", "-p", "slow=20,40", "--windows", "3", "--jobs", "1",
        "--fractional", "--no-save",
    ]  # fmt: skip
    report = tmp_path / "wf.html"
    code, out, err = call(capsys, *args, "--json", "--report", str(report))
    assert code == 0, err
    data = json.loads(out)
    assert len(data["windows"]) == 3
    assert data["stats"]["windows"] == 3
    assert {"parameter", "chosen", "most_common"} <= set(data["stability"][0])
    html = report.read_text()
    assert "Parameter stability" in html
    assert "<svg" in html
    code, _, err = call(capsys, *args, "--windows", "0")
    assert code == 2
    assert "at least 1 window" in err
    code, _, err = call(capsys, *args, "--report", str(tmp_path / "no" / "wf.html"))
    assert code == 2
    assert "does not exist" in err
