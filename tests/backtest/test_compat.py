"""The engine against backtesting.py (a test-only dependency) on GOOG daily bars.

Set to backtesting.py's rules (whole units, all-in, commission on both fills,
exclusive orders), both give the same trades and the same final equity.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from backtesting import Backtest, Strategy
from backtesting.lib import crossover
from backtesting.test import GOOG, SMA

from marketlake.backtest import BacktestConfig, get_strategy, run
from marketlake.backtest.data import Bars
from tests.backtest.helpers import goog


class SmaCrossLongShort(Strategy):
    n1 = 10
    n2 = 20

    def init(self) -> None:
        self.fast = self.I(SMA, self.data.Close, self.n1)
        self.slow = self.I(SMA, self.data.Close, self.n2)

    def next(self) -> None:
        if crossover(self.fast, self.slow):
            self.buy()
        elif crossover(self.slow, self.fast):
            self.sell()


class SmaCrossLongOnly(SmaCrossLongShort):
    def next(self) -> None:
        if crossover(self.fast, self.slow):
            self.buy()
        elif crossover(self.slow, self.fast):
            self.position.close()


def reference(strategy: type[Strategy], **options: Any) -> pd.Series:
    return _reference(strategy, tuple(sorted(options.items())))


@functools.cache
def _reference(strategy: type[Strategy], options: tuple[tuple[str, Any], ...]) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "trades remain open at the end" is expected
        return Backtest(GOOG, strategy, cash=10_000, exclusive_orders=True, **dict(options)).run()


def ours(bars: Bars, **config: Any) -> Any:
    return run(
        [bars],
        get_strategy("sma_cross", {"fast": 10, "slow": 20}),
        BacktestConfig(cash=10_000, **config),
    )


CASES = [
    pytest.param(
        SmaCrossLongShort,
        {"commission": 0.002},
        {"commission_bps": 20, "allow_short": True},
        id="long-short-next-open",
    ),
    pytest.param(
        SmaCrossLongShort,
        {"commission": 0.002, "trade_on_close": True},
        {"commission_bps": 20, "allow_short": True, "fill": "close"},
        id="long-short-close",
    ),
    pytest.param(
        SmaCrossLongOnly, {"commission": 0.001}, {"commission_bps": 10}, id="long-only-next-open"
    ),
    pytest.param(SmaCrossLongShort, {}, {"allow_short": True}, id="no-commission"),
]


@pytest.mark.parametrize(("strategy", "theirs_options", "our_config"), CASES)
def test_same_trades_as_backtesting_py(
    strategy: type[Strategy], theirs_options: dict[str, Any], our_config: dict[str, Any]
) -> None:
    """Every closed trade matches in time, side, size, prices and net P&L."""
    expected = reference(strategy, **theirs_options)["_trades"]
    result = ours(goog(), **our_config)
    got = result.trades.filter(result.trades.column("exit_reason").to_numpy(False) != "open")
    got = got.to_pandas()
    assert len(got) == len(expected) > 40
    np.testing.assert_array_equal(got["entry_time"].dt.tz_localize(None), expected["EntryTime"])
    np.testing.assert_array_equal(got["exit_time"].dt.tz_localize(None), expected["ExitTime"])
    np.testing.assert_array_equal(
        np.where(got["side"] == "long", 1, -1) * got["size"], expected["Size"]
    )
    np.testing.assert_allclose(got["entry_price"], expected["EntryPrice"], rtol=1e-12)
    np.testing.assert_allclose(got["exit_price"], expected["ExitPrice"], rtol=1e-12)
    np.testing.assert_allclose(got["pnl"], expected["PnL"], rtol=1e-9)


@pytest.mark.parametrize(("strategy", "theirs_options", "our_config"), CASES)
def test_same_final_equity_as_backtesting_py(
    strategy: type[Strategy], theirs_options: dict[str, Any], our_config: dict[str, Any]
) -> None:
    """Final equity (open trade marked to the last close) agrees to 1e-6 relative."""
    expected = reference(strategy, **theirs_options)
    result = ours(goog(), **our_config)
    assert result.stats["final_equity"] == pytest.approx(expected["Equity Final [$]"], rel=1e-6)
    assert result.stats["trades"] == expected["# Trades"]


def test_equity_curve_and_drawdown_match_backtesting_py() -> None:
    """The bar-by-bar equity, max drawdown and its duration are the same too."""
    expected = reference(SmaCrossLongShort, commission=0.002)
    result = ours(goog(), commission_bps=20, allow_short=True)
    np.testing.assert_allclose(result.equity, expected["_equity_curve"]["Equity"], rtol=1e-9)
    assert result.stats["max_drawdown_pct"] == pytest.approx(expected["Max. Drawdown [%]"])
    assert result.stats["max_drawdown_days"] == expected["Max. Drawdown Duration"].days
    assert result.stats["win_rate_pct"] == pytest.approx(expected["Win Rate [%]"])
    assert result.stats["total_return_pct"] == pytest.approx(expected["Return [%]"])
