"""The portfolio engine: shared cash, rebalancing schedules, calendars, costs, references.

The references are bt (the portfolio backtester most users would reach for) on real
daily data shipped in packages: the S&P 500 and NASDAQ Composite of ``arch.data``
and Google of ``backtesting.test``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketlake.backtest.data import Bars
from marketlake.backtest.engine import BacktestConfig
from marketlake.backtest.engine import run as run_single
from marketlake.backtest.portfolio import (
    EqualWeight,
    FixedMix,
    InverseVolatility,
    MomentumTopN,
    Panel,
    PortfolioConfig,
    SignalWeights,
    decision_rows,
    get_portfolio_strategy,
    run_portfolio,
)
from marketlake.backtest.strategies import SmaCross
from marketlake.errors import InputError

bt = pytest.importorskip("bt")
arch_data = pytest.importorskip("arch.data")
backtesting_test = pytest.importorskip("backtesting.test")

DAY = 86_400_000_000


def _bars(symbol: str, frame: pd.DataFrame, start: str, end: str) -> Bars:
    frame = frame.loc[start:end]
    ts = pd.DatetimeIndex(frame.index).tz_localize("UTC").asi8 // 1000
    return Bars(
        symbol,
        ts.astype(np.int64),
        *(frame[c].to_numpy(np.float64) for c in ("Open", "High", "Low", "Close", "Volume")),
    )


@pytest.fixture(scope="module")
def real_daily() -> list[Bars]:
    from arch.data import nasdaq, sp500

    return [
        _bars("SPX", sp500.load(), "2005-01-01", "2012-12-31"),
        _bars("NDX", nasdaq.load(), "2005-01-01", "2012-12-31"),
        _bars("GOOG", backtesting_test.GOOG, "2005-01-01", "2012-12-31"),
    ]


def _bt_run(bars: list[Bars], weigh: Any, *, integer: bool) -> Any:
    prices = pd.DataFrame(
        {b.symbol: pd.Series(b.close, index=pd.to_datetime(b.ts, unit="us")) for b in bars}
    )
    strategy = bt.Strategy(
        "ref", [bt.algos.RunMonthly(), bt.algos.SelectAll(), weigh, bt.algos.Rebalance()]
    )
    test = bt.Backtest(
        strategy, prices, initial_capital=1_000_000, integer_positions=integer, progress_bar=False
    )
    return bt.run(test).backtests["ref"]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (EqualWeight(), lambda: bt.algos.WeighEqually()),
        (
            InverseVolatility(lookback_days=90),
            lambda: bt.algos.WeighInvVol(lookback=pd.DateOffset(days=90)),
        ),
    ],
    ids=["equal_weight", "inverse_volatility"],
)
def test_monthly_portfolios_equal_bt_on_real_daily_data(
    real_daily: list[Bars], ours: Any, theirs: Any
) -> None:
    ref = _bt_run(real_daily, theirs(), integer=False)
    config = PortfolioConfig(cash=1_000_000, rebalance="monthly", fill="close", fractional=True)
    result = run_portfolio(real_daily, ours, config)
    # bt's first row is the day before the data starts, holding the initial capital
    bt_equity = ref.strategy.values.to_numpy()[1:]
    np.testing.assert_allclose(result.equity, bt_equity, rtol=1e-9)
    assert result.equity[-1] == pytest.approx(bt_equity[-1], abs=1e-6)
    positions = ref.positions[result.symbols].to_numpy()[1:]
    np.testing.assert_allclose(result.units, positions, rtol=1e-9, atol=1e-9)
    weights = ref.security_weights[result.symbols].to_numpy()[1:]
    np.testing.assert_allclose(result.weights(), weights, atol=1e-6)
    # 8 years of monthly rebalancing of 3 symbols
    assert 90 <= result.stats["fills"] <= 3 * 96


def test_whole_units_equal_bt_integer_positions(real_daily: list[Bars]) -> None:
    ref = _bt_run(real_daily, bt.algos.WeighEqually(), integer=True)
    config = PortfolioConfig(cash=1_000_000, rebalance="monthly", fill="close")
    result = run_portfolio(real_daily, EqualWeight(), config)
    positions = ref.positions[result.symbols].to_numpy()[1:]
    np.testing.assert_array_equal(result.units, positions)
    np.testing.assert_allclose(result.equity, ref.strategy.values.to_numpy()[1:], rtol=1e-9)


def test_weights_sum_to_one_after_each_rebalance_without_costs(real_daily: list[Bars]) -> None:
    config = PortfolioConfig(cash=1_000_000, rebalance="monthly", fill="close", fractional=True)
    result = run_portfolio(real_daily, EqualWeight(), config)
    rows = np.flatnonzero(decision_rows(result.ts, "monthly"))
    np.testing.assert_allclose(result.weights()[rows].sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(result.weights()[rows], 1 / 3, atol=1e-12)


def _crypto_and_stock() -> list[Bars]:
    # crypto trades every day, the stock on weekdays only; 60 days from a Monday
    start = pd.Timestamp("2024-01-01", tz="UTC").value // 1000
    every = start + np.arange(60) * DAY
    weekdays = every[pd.to_datetime(every, unit="us").dayofweek < 5]
    rng = np.random.default_rng(3)

    def make(symbol: str, ts: np.ndarray[Any, Any]) -> Bars:
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(ts))))
        open_ = close * (1 + rng.normal(0, 0.002, len(ts)))
        return Bars(
            symbol,
            ts.astype(np.int64),
            open_,
            np.maximum(open_, close) * 1.01,
            np.minimum(open_, close) * 0.99,
            close,
            np.full(len(ts), 1000.0),
        )

    return [make("BTCUSDT", every), make("AAPL", weekdays)]


@pytest.mark.parametrize("fill", ["open", "close"])
@pytest.mark.parametrize("rebalance", ["bar", "daily", "weekly"])
def test_a_symbol_only_fills_on_its_own_bars(fill: str, rebalance: str) -> None:
    bars = _crypto_and_stock()
    config = PortfolioConfig(rebalance=rebalance, fill=fill, fractional=True)  # type: ignore[arg-type]
    result = run_portfolio(bars, EqualWeight(), config)
    for one in bars:
        filled = result.fills.filter(
            np.asarray(result.fills.column("symbol").to_numpy(zero_copy_only=False) == one.symbol)
        )
        times = filled.column("ts").cast("int64").to_numpy()
        assert len(times) > 0
        assert np.isin(times, one.ts).all(), f"{one.symbol} filled on a bar it does not have"
    # the stock's units never change on a weekend row
    stock = result.symbols.index("AAPL")
    weekend = ~np.isin(result.ts, bars[1].ts)
    moved = np.diff(result.units[:, stock], prepend=0.0) != 0
    assert not (moved & weekend).any()


def test_open_fills_trade_on_the_next_bar_at_its_open() -> None:
    bars = _crypto_and_stock()[:1]
    result = run_portfolio(
        bars, EqualWeight(), PortfolioConfig(rebalance="monthly", fill="open", fractional=True)
    )
    first = result.fills.slice(0, 1).to_pylist()[0]
    assert first["ts"].timestamp() * 1e6 == bars[0].ts[1]
    assert first["price"] == pytest.approx(bars[0].open[1])
    assert first["units"] == pytest.approx(10_000 / bars[0].open[1])


def test_costs_are_charged_and_cash_never_goes_negative(real_daily: list[Bars]) -> None:
    config = PortfolioConfig(
        cash=100_000,
        rebalance="weekly",
        commission_bps=10,
        commission_fixed=1.0,
        slippage_bps=5,
    )
    result = run_portfolio(real_daily, InverseVolatility(lookback_days=60), config)
    fills = result.fills.to_pydict()
    for units, price, fee in zip(fills["units"], fills["price"], fills["fees"], strict=True):
        assert fee == pytest.approx(abs(units) * price * 0.001 + 1.0)
        assert float(units).is_integer()
    cash = result.equity - (result.units * result.panel.last_close()).sum(axis=1)
    assert cash.min() >= -1e-6
    free = run_portfolio(
        real_daily,
        InverseVolatility(lookback_days=60),
        PortfolioConfig(cash=100_000, rebalance="weekly"),
    )
    assert result.equity[-1] < free.equity[-1]
    assert result.stats["fees"] == pytest.approx(sum(fills["fees"]))


def test_shorts_need_permission_and_respect_the_gross_limit(real_daily: list[Bars]) -> None:
    long_short = FixedMix(mix="SPX=1.0,NDX=-1.0")
    with pytest.raises(InputError, match="allow-short"):
        run_portfolio(real_daily, long_short, PortfolioConfig(fill="close"))
    config = PortfolioConfig(fill="close", allow_short=True, max_gross=1.0, fractional=True)
    result = run_portfolio(real_daily, long_short, config)
    rows = np.flatnonzero(decision_rows(result.ts, "monthly"))
    weights = result.weights()[rows]
    np.testing.assert_allclose(weights[:, 0], 0.5, atol=1e-12)
    np.testing.assert_allclose(weights[:, 1], -0.5, atol=1e-12)
    assert result.stats["exposure_pct"] == pytest.approx(100, abs=5)


def test_fixed_mix_is_a_sixty_forty_portfolio(real_daily: list[Bars]) -> None:
    config = PortfolioConfig(fill="close", fractional=True, rebalance="monthly")
    result = run_portfolio(real_daily[:2], FixedMix(mix="SPX=0.6,NDX=0.4"), config)
    rows = np.flatnonzero(decision_rows(result.ts, "monthly"))
    np.testing.assert_allclose(result.weights()[rows], [[0.6, 0.4]] * len(rows), atol=1e-12)
    with pytest.raises(InputError, match="not among the symbols"):
        run_portfolio(real_daily, FixedMix(mix="TLT=1"), config)
    with pytest.raises(InputError, match="SYMBOL=WEIGHT"):
        FixedMix(mix="SPX:0.6")


def test_drift_band_rebalances_only_when_a_weight_strays(real_daily: list[Bars]) -> None:
    mix = FixedMix(mix="SPX=0.5,GOOG=0.5")
    never = run_portfolio(
        real_daily, mix, PortfolioConfig(rebalance="monthly", fill="close", fractional=True)
    )
    banded = run_portfolio(
        real_daily,
        mix,
        PortfolioConfig(rebalance="monthly", drift_band=0.02, fill="close", fractional=True),
    )
    drift = np.abs(banded.weights() - 0.5)[:, [0, 2]].max(axis=1)
    assert drift.max() <= 0.02 + 0.06  # one day's move past the band before the fill
    assert np.abs(never.weights() - 0.5)[:, [0, 2]].max() > drift.max()
    assert banded.stats["fills"] > never.stats["fills"]


def test_momentum_holds_the_best_trailing_returns(real_daily: list[Bars]) -> None:
    strategy = MomentumTopN(top=1, lookback=60)
    panel = Panel.of(real_daily)
    weights = strategy.weights(panel)
    close = pd.DataFrame(panel.close, columns=panel.symbols).ffill()
    best = (close / close.shift(60) - 1).to_numpy()[60:].argmax(axis=1)
    assert (weights[60:].argmax(axis=1) == best).all()
    assert np.isnan(weights[:60]).all()
    result = run_portfolio(real_daily, strategy, PortfolioConfig(fill="close", fractional=True))
    held = (result.units > 0).sum(axis=1)
    assert held.max() == 1


def test_signal_strategies_are_a_special_case(real_daily: list[Bars]) -> None:
    goog = real_daily[2]
    single = run_single([goog], SmaCross(fast=10, slow=30), BacktestConfig(fill="close"))
    wrapped = run_portfolio(
        [goog],
        SignalWeights(strategy=SmaCross(fast=10, slow=30)),
        PortfolioConfig(rebalance="signal", fill="close"),
    )
    np.testing.assert_allclose(wrapped.equity, single.equity, rtol=1e-12)
    assert get_portfolio_strategy("sma_cross", {"fast": 5}).label() == SmaCross(fast=5).label()


@settings(max_examples=40, deadline=None)
@given(
    cash=st.floats(1_000, 1e7),
    rebalance=st.sampled_from(["bar", "daily", "weekly", "monthly"]),
    fill=st.sampled_from(["open", "close"]),
    bps=st.floats(0, 50),
)
def test_value_is_conserved_without_costs_and_never_created_with_them(
    cash: float, rebalance: str, fill: str, bps: float
) -> None:
    bars = _crypto_and_stock()
    costly = PortfolioConfig(cash=cash, rebalance=rebalance, fill=fill, commission_bps=bps)  # type: ignore[arg-type]
    result = run_portfolio(bars, EqualWeight(), costly)
    held = (result.units * result.panel.last_close()).sum(axis=1)
    cash_left = result.equity - held
    assert cash_left.min() >= -1e-6 * cash
    free = run_portfolio(
        bars,
        EqualWeight(),
        PortfolioConfig(cash=cash, rebalance=rebalance, fill=fill, fractional=True),  # type: ignore[arg-type]
    )
    # fractional, no costs: the value is exactly the marked positions, nothing leaks
    fills = free.fills.to_pydict()
    spent = sum(u * p for u, p in zip(fills["units"], fills["price"], strict=True))
    final_cash = free.equity[-1] - (free.units[-1] * free.panel.last_close()[-1]).sum()
    assert final_cash == pytest.approx(cash - spent, rel=1e-9, abs=1e-6)


def test_bad_configuration_is_one_clear_error() -> None:
    with pytest.raises(InputError, match="rebalance must be one of"):
        PortfolioConfig(rebalance="hourly")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="drift band"):
        PortfolioConfig(drift_band=2)
    with pytest.raises(InputError, match="unknown strategy"):
        get_portfolio_strategy("nope")
    with pytest.raises(InputError, match="no bars"):
        run_portfolio([], EqualWeight())
