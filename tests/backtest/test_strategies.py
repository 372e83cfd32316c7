"""Strategies: typed parameters, clear rejections, and the signals of the built-ins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import talib

from marketlake.backtest import BacktestConfig, Strategy, get_strategy, run
from marketlake.backtest.data import Bars
from marketlake.backtest.strategies import STRATEGIES, Parameter, coerce, forward_fill, param
from marketlake.errors import InputError
from tests.backtest.helpers import goog, make_bars

NAN = np.nan


def test_the_four_built_ins_are_registered() -> None:
    assert sorted(STRATEGIES) == [
        "bollinger_breakout",
        "buy_and_hold",
        "rsi_reversion",
        "sma_cross",
    ]


def test_parameters_are_typed_with_defaults_and_help() -> None:
    params = {p.name: p for p in STRATEGIES["sma_cross"].parameters()}
    assert params["fast"] == Parameter("fast", int, 10, "bars in the fast moving average")
    assert params["slow"].describe() == "slow (int, default 30)"


def test_string_values_are_converted_to_the_parameter_type() -> None:
    strategy = get_strategy("rsi_reversion", {"period": "10", "lower": "25", "upper": 75})
    assert strategy.params() == {"period": 10, "lower": 25.0, "upper": 75.0}
    assert isinstance(strategy.params()["lower"], float)
    assert get_strategy("sma_cross", {"fast": 5.0}).params()["fast"] == 5


def test_an_unknown_parameter_is_rejected_with_the_valid_ones() -> None:
    with pytest.raises(
        InputError,
        match=r"unknown parameter 'fats' for strategy sma_cross; "
        r"valid parameters: fast \(int, default 10\), "
        r"slow \(int, default 30\)",
    ):
        get_strategy("sma_cross", {"fats": 5})


def test_buy_and_hold_takes_no_parameters() -> None:
    with pytest.raises(InputError, match="valid parameters: none"):
        get_strategy("buy_and_hold", {"x": 1})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"fast": "ten"}, "parameter fast must be an integer, got 'ten'"),
        ({"fast": "10.5"}, "parameter fast must be an integer"),
        ({"fast": True}, "parameter fast must be an integer"),
        ({"fast": 50, "slow": 20}, r"fast \(50\) must be smaller than slow \(20\)"),
        ({"fast": 20, "slow": 20}, r"fast \(20\) must be smaller than slow \(20\)"),
        ({"fast": 0}, "fast must be at least 1"),
    ],
)
def test_bad_sma_cross_parameters(params: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        get_strategy("sma_cross", params)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("rsi_reversion", {"lower": 80}, "need 0 < lower < upper < 100"),
        ("rsi_reversion", {"upper": "nan"}, "must be a number"),
        ("rsi_reversion", {"period": 1}, "period must be at least 2"),
        ("bollinger_breakout", {"k": 0}, "k must be positive"),
    ],
)
def test_bad_parameters_of_the_other_strategies(
    name: str, params: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        get_strategy(name, params)


def test_an_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(
        InputError,
        match="unknown strategy 'momo'; choose one of: "
        "bollinger_breakout, buy_and_hold, rsi_reversion",
    ):
        get_strategy("momo")


def test_names_accept_dashes() -> None:
    assert get_strategy("SMA-Cross").name == "sma_cross"


def test_booleans_are_read_from_words() -> None:
    spec = Parameter("flag", bool, False, "")
    assert [coerce(spec, v) for v in ("yes", "0", True, "ON")] == [True, False, True, True]
    with pytest.raises(InputError, match="must be true or false"):
        coerce(spec, "maybe")


def test_sma_cross_signals_only_at_crossings() -> None:
    close = np.array([5, 4, 3, 2, 3, 6, 9, 8, 4, 2, 1], dtype=float)
    signals = get_strategy("sma_cross", {"fast": 1, "slow": 3}).signals(make_bars(close))
    sma3 = talib.SMA(close, 3)
    expected = np.full(len(close), NAN)
    for i in range(1, len(close)):
        if close[i - 1] < sma3[i - 1] and close[i] > sma3[i]:
            expected[i] = 1
        elif close[i - 1] > sma3[i - 1] and close[i] < sma3[i]:
            expected[i] = -1
    np.testing.assert_array_equal(signals, expected)
    assert np.nansum(np.abs(signals)) == 2


def test_rsi_reversion_is_long_when_oversold_and_short_when_overbought() -> None:
    bars = goog()
    rsi = talib.RSI(bars.close, 14)
    signals = get_strategy("rsi_reversion").signals(bars)
    np.testing.assert_array_equal(signals == 1, rsi < 30)
    np.testing.assert_array_equal(signals == -1, rsi > 70)


def test_bollinger_breakout_holds_until_the_middle_band() -> None:
    bars = goog()
    upper, middle, lower = talib.BBANDS(bars.close, 20, 2.0, 2.0)
    target = forward_fill(get_strategy("bollinger_breakout").signals(bars))
    state, expected = 0.0, []
    for c, up, mid, lo in zip(bars.close, upper, middle, lower, strict=True):
        if (state == 1 and c < mid) or (state == -1 and c > mid):
            state = 0.0
        if c > up:
            state = 1.0
        elif c < lo:
            state = -1.0
        expected.append(state)
    np.testing.assert_array_equal(target, expected)


def test_buy_and_hold_enters_at_the_second_open_and_never_exits() -> None:
    bars = goog()
    result = run([bars], get_strategy("buy_and_hold"), BacktestConfig(cash=100_000))
    [trade] = result.trades.to_pylist()
    assert trade["entry_price"] == bars.open[1]
    assert trade["size"] == 100_000 // bars.open[1]
    assert trade["exit_reason"] == "open"


def test_forward_fill_keeps_leading_nans() -> None:
    filled = forward_fill(np.array([NAN, 1, NAN, -1, NAN]))
    np.testing.assert_array_equal(filled, [NAN, 1, 1, -1, -1])


@dataclass(frozen=True)
class Momentum(Strategy):
    """The module docstring's example of a custom strategy."""

    name: ClassVar[str] = "momentum"
    lookback: int = param(20, "bars to look back")

    def signals(self, bars: Bars) -> np.ndarray:
        change = np.full(len(bars), np.nan)
        change[self.lookback :] = bars.close[self.lookback :] / bars.close[: -self.lookback] - 1
        return np.sign(change)


def test_a_custom_strategy_runs_on_the_engine() -> None:
    strategy = Momentum.from_params({"lookback": "5"})
    result = run([goog()], strategy, BacktestConfig())
    assert strategy.label() == "momentum(lookback=5)"
    assert result.stats["trades"] > 10
