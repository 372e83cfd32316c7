"""Indicators against TA-Lib (the ``ta-lib`` wheel, a test-only dependency)."""

from __future__ import annotations

import numpy as np
import pytest
import talib

from marketlake.backtest import indicators as ind
from tests.backtest.helpers import goog


def long_walk() -> np.ndarray:
    """300,000 prices around 20,000 (several prefix-sum blocks long)."""
    rng = np.random.default_rng(3)
    return 20_000 * np.exp(np.cumsum(rng.standard_normal(300_000) * 0.002))


SERIES = [pytest.param(lambda: goog().close, id="goog"), pytest.param(long_walk, id="walk")]


def same(ours: np.ndarray, theirs: np.ndarray, rtol: float) -> None:
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=rtol, equal_nan=True)


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize("window", [1, 2, 20, 200])
def test_sma_matches_talib(series: object, window: int) -> None:
    close = series()  # type: ignore[operator]
    same(ind.sma(close, window), talib.SMA(close, window), rtol=1e-11)


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize(("window", "k"), [(20, 2.0), (5, 1.5), (100, 3.0)])
def test_bollinger_matches_talib_bbands(series: object, window: int, k: float) -> None:
    close = series()  # type: ignore[operator]
    upper, middle, lower = talib.BBANDS(close, window, k, k)
    ours = ind.bollinger(close, window, k)
    same(ours[0], lower, rtol=1e-9)
    same(ours[1], middle, rtol=1e-11)
    same(ours[2], upper, rtol=1e-9)


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize("period", [2, 14, 30])
def test_rsi_matches_talib(series: object, period: int) -> None:
    close = series()  # type: ignore[operator]
    same(ind.rsi(close, period), talib.RSI(close, period), rtol=1e-9)


def test_rsi_of_a_flat_series_is_zero_like_talib() -> None:
    flat = np.full(30, 5.0)
    same(ind.rsi(flat, 14), talib.RSI(flat, 14), rtol=0)


def test_windows_longer_than_the_series_give_only_nans() -> None:
    short = np.array([1.0, 2.0, 3.0])
    assert np.isnan(ind.sma(short, 5)).all()
    assert np.isnan(ind.rolling_std(short, 5)).all()
    assert np.isnan(ind.rsi(short, 5)).all()


def test_linear_recurrence_equals_the_plain_loop() -> None:
    x = np.random.default_rng(1).standard_normal(5000)
    expected = np.empty_like(x)
    level = 0.0
    for i, value in enumerate(x):
        level = 0.93 * level + value
        expected[i] = level
    np.testing.assert_allclose(ind.linear_recurrence(x, 0.93), expected, rtol=1e-10, atol=1e-12)


def test_crossings_need_a_strict_change_of_side() -> None:
    a = np.array([np.nan, 1.0, 3.0, 3.0, 1.0, 2.0, 3.0])
    b = np.array([2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    assert ind.crossed_above(a, b).tolist() == [False, False, True, False, False, False, False]
    assert ind.crossed_below(a, b).tolist() == [False, False, False, False, True, False, False]


def test_crossings_are_both_directions_at_once() -> None:
    close = goog().close
    fast, slow = ind.sma(close, 10), ind.sma(close, 30)
    up, down = ind.crossings(fast, slow)
    np.testing.assert_array_equal(up, ind.crossed_above(fast, slow))
    np.testing.assert_array_equal(down, ind.crossed_below(fast, slow))
