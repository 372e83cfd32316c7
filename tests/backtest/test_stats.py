"""Statistics: golden numbers on GOOG daily and the definitions on small curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from marketlake.backtest import BacktestConfig, BacktestResult, get_strategy, run
from marketlake.backtest.stats import STAT_LABELS, _longest_drawdown, format_stat
from tests.backtest.helpers import DAY_US, goog, make_bars

GOLDEN = {
    "start": "2004-08-19T00:00:00Z",
    "end": "2013-03-01T00:00:00Z",
    "duration_days": 3116.0,
    "bars": 2148,
    "initial_cash": 10000.0,
    "final_equity": 66655.0918385952,
    "equity_peak": 66709.2118385952,
    "total_return_pct": 566.550918385952,
    "buy_hold_return_pct": 703.4582419772773,
    "cagr_pct": 24.901528997860666,
    "volatility_ann_pct": 22.330782499578675,
    "sharpe": 1.1060721644284446,
    "sortino": 1.793901482356483,
    "calmar": 1.267494788327341,
    "max_drawdown_pct": -19.6462575051075,
    "max_drawdown_days": 589.0,
    "exposure_pct": 57.402234636871505,
    "trades": 46,
    "win_rate_pct": 63.04347826086957,
    "profit_factor": 2.8458712657523173,
    "expectancy": 1048.2086119659823,
    "avg_trade_pct": 4.56219570213889,
    "best_trade_pct": 57.01891711684246,
    "worst_trade_pct": -12.546987911196622,
    "avg_trade_days": 36.84782608695652,
    "fees": 3053.1195864050005,
    "open_trades": 1,
}


@pytest.fixture(scope="module")
def golden_run() -> BacktestResult:
    return run(
        [goog()],
        get_strategy("sma_cross", {"fast": 10, "slow": 20}),
        BacktestConfig(commission_bps=10, slippage_bps=5),
    )


def test_golden_statistics_on_goog_pin_every_number(golden_run: BacktestResult) -> None:
    """sma_cross(10, 20), long only, 10 bps commission, 5 bps slippage, next-open fills."""
    stats = golden_run.stats
    assert list(stats) == list(STAT_LABELS) == list(GOLDEN)
    for key, value in GOLDEN.items():
        assert stats[key] == (
            pytest.approx(value, rel=1e-9) if isinstance(value, float) else value
        ), key


def test_risk_figures_follow_their_definitions(golden_run: BacktestResult) -> None:
    """Sharpe, Sortino, volatility and CAGR recomputed with pandas from the equity curve."""
    result = golden_run
    equity = pd.Series(result.equity)
    returns = equity.pct_change().dropna()
    years = 3116 / 365.25
    per_year = len(returns) / years
    assert result.stats["sharpe"] == pytest.approx(
        returns.mean() / returns.std() * np.sqrt(per_year)
    )
    downside = np.sqrt((returns.clip(upper=0) ** 2).mean())
    assert result.stats["sortino"] == pytest.approx(returns.mean() / downside * np.sqrt(per_year))
    assert result.stats["volatility_ann_pct"] == pytest.approx(
        returns.std() * np.sqrt(per_year) * 100
    )
    assert result.stats["cagr_pct"] == pytest.approx(
        ((equity.iloc[-1] / 10_000) ** (1 / years) - 1) * 100
    )
    trades = result.trades.to_pandas()
    closed = trades[trades.exit_reason != "open"]
    assert result.stats["profit_factor"] == pytest.approx(
        closed.pnl[closed.pnl > 0].sum() / -closed.pnl[closed.pnl < 0].sum()
    )


def test_the_longest_drawdown_runs_from_a_peak_to_its_recovery() -> None:
    equity = np.array([100, 110, 100, 105, 111, 90, 95, 99.0])
    drawdown = equity / np.maximum.accumulate(equity) - 1
    ts = np.arange(len(equity), dtype=np.int64) * DAY_US
    assert _longest_drawdown(drawdown, ts) == 3 * DAY_US  # bar 1 to bar 4; the tail is 3 too
    assert _longest_drawdown(drawdown[:7], ts[:7]) == 3 * DAY_US
    assert _longest_drawdown(np.zeros(3), ts[:3]) == 0


def test_an_unrecovered_drawdown_lasts_until_the_end() -> None:
    equity = np.array([100, 120, 90, 95, 100, 101.0])
    drawdown = equity / np.maximum.accumulate(equity) - 1
    assert _longest_drawdown(drawdown, np.arange(6, dtype=np.int64) * DAY_US) == 4 * DAY_US


def test_without_trades_the_trade_figures_are_undefined() -> None:
    result = run([make_bars(np.linspace(10, 20, 40))], get_strategy("sma_cross"))
    stats = result.stats
    assert stats["trades"] == 0
    assert stats["open_trades"] == 0
    assert stats["win_rate_pct"] is None
    assert stats["profit_factor"] is None
    assert stats["sharpe"] is None  # a flat equity curve has no volatility
    assert stats["max_drawdown_pct"] == 0
    assert stats["calmar"] is None


def test_only_winning_trades_leave_the_profit_factor_undefined() -> None:
    close = [10, 10, 11, 12, 13]
    result = run([make_bars(close)], get_strategy("buy_and_hold"), BacktestConfig(cash=100))
    assert result.stats["profit_factor"] is None
    assert result.stats["open_trades"] == 1


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("sharpe", 1.23456, "1.235"),
        ("total_return_pct", 1234.5678, "1,234.57"),
        ("max_drawdown_days", 12.34, "12.3"),
        ("trades", 1234, "1,234"),
        ("profit_factor", None, "n/a"),
        ("start", "2024-01-02T00:00:00Z", "2024-01-02"),
    ],
)
def test_format_stat(key: str, value: object, text: str) -> None:
    assert format_stat(key, value) == text
