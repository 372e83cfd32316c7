"""Engine rules on hand-made bars, each checked against numbers worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from marketlake.backtest import BacktestConfig, get_strategy, run
from marketlake.backtest.engine import simulate
from marketlake.errors import DataError, InputError
from tests.backtest.helpers import DAY_US, make_bars

NAN = np.nan


def sim(bars: Any, signals: list[float], cash: float = 1000.0, **config: Any) -> Any:
    return simulate(
        bars, np.array(signals, dtype=np.float64), BacktestConfig(cash=cash, **config), cash
    )


def test_buy_and_hold_pays_slippage_and_both_commissions() -> None:
    """Entry at the next open, slipped 1 %, 10 bps + 1 fixed per fill, units floored."""
    bars = make_bars([10.5, 11.5, 12.5, 13.5], open_=[10, 11, 12, 13])
    result = run(
        [bars],
        get_strategy("buy_and_hold"),
        BacktestConfig(cash=1000, commission_bps=10, commission_fixed=1, slippage_bps=100),
    )
    trade = result.trades.to_pylist()[0]
    assert trade["entry_price"] == pytest.approx(11.11)
    assert trade["size"] == 89  # floor((1000 - 1) / (11.11 * 1.001))
    assert trade["fees"] == pytest.approx(1 + 0.001 * 89 * 11.11)
    assert trade["exit_reason"] == "open"
    assert trade["pnl"] == pytest.approx(89 * (13.5 - 11.11) - 1.98879)
    np.testing.assert_allclose(result.equity, [1000, 1032.72121, 1121.72121, 1210.72121])


def test_a_reversal_closes_the_long_and_opens_a_short_at_the_same_open() -> None:
    bars = make_bars([10, 10, 12, 11, 9, 10])
    done = sim(bars, [1, NAN, -1, NAN, 0, NAN], allow_short=True)
    np.testing.assert_array_equal(done.trades["entry_bar"], [1, 3])
    np.testing.assert_array_equal(done.trades["exit_bar"], [3, 5])
    np.testing.assert_array_equal(done.trades["size"], [100, 100])
    np.testing.assert_allclose(done.trades["pnl"], [100, 100])
    np.testing.assert_allclose(done.equity, [1000, 1000, 1200, 1100, 1300, 1200])
    np.testing.assert_array_equal(done.held, [False, True, True, True, True, False])


def test_long_only_turns_a_short_target_into_flat() -> None:
    done = sim(make_bars([10, 10, 12, 11, 9, 10]), [1, NAN, -1, NAN, 0, NAN])
    np.testing.assert_array_equal(done.trades["exit_bar"], [3])
    np.testing.assert_allclose(done.equity, [1000, 1000, 1200, 1100, 1100, 1100])


def test_close_fills_trade_at_the_signal_bar_close() -> None:
    done = sim(make_bars([10, 20, 25, 40]), [1, NAN, 0, NAN], fill="close")
    assert (done.trades["entry_bar"][0], done.trades["exit_bar"][0]) == (0, 2)
    assert done.trades["pnl"][0] == pytest.approx(100 * (25 - 10))


def test_a_target_set_after_the_last_bar_is_never_traded() -> None:
    assert len(sim(make_bars([10, 11, 12]), [NAN, NAN, 1]).trades["size"]) == 0


def stop_bars(open2: float, high2: float, low2: float, *, low1: float = 99) -> Any:
    return make_bars(
        [100, 100, 96, 97, 98],
        open_=[100, 100, open2, 96, 98],
        high=[100, 101, high2, 97, 98],
        low=[100, low1, low2, 96, 98],
    )


@pytest.mark.parametrize(
    ("bar2", "price", "reason"),
    [
        pytest.param((99, 100, 94), 95, "stop_loss", id="stop-inside-the-bar"),
        pytest.param((90, 100, 89), 90, "stop_loss", id="gap-below-the-stop-fills-at-open"),
        pytest.param((100, 112, 99), 110, "take_profit", id="take-profit-inside-the-bar"),
        pytest.param((111, 112, 99), 111, "take_profit", id="gap-above-take-profit-fills-at-open"),
        pytest.param((100, 112, 94), 95, "stop_loss", id="both-in-one-bar-stop-first"),
    ],
)
def test_stops_exit_at_the_level_or_the_gapped_open(
    bar2: tuple[float, float, float], price: float, reason: str
) -> None:
    done = sim(stop_bars(*bar2), [1, NAN, NAN, NAN, NAN], stop_loss_pct=5, take_profit_pct=10)
    assert done.trades["exit_bar"][0] == 2
    assert done.trades["exit_price"][0] == pytest.approx(price)
    assert ["signal", "stop_loss", "take_profit"][done.trades["reason"][0]] == reason
    units = 10  # floor(1000 / 100)
    assert done.equity[-1] == pytest.approx(1000 + units * (price - 100))


def test_after_a_stop_the_position_stays_flat_until_the_target_changes() -> None:
    done = sim(stop_bars(99, 100, 94), [1, NAN, NAN, NAN, NAN], stop_loss_pct=5)
    np.testing.assert_array_equal(done.held, [False, True, False, False, False])
    again = sim(stop_bars(99, 100, 94), [1, NAN, 0, 1, NAN], stop_loss_pct=5)
    np.testing.assert_array_equal(again.trades["entry_bar"], [1, 4])


def test_open_fills_watch_the_stop_on_the_entry_bar_too() -> None:
    done = sim(stop_bars(99, 100, 99, low1=94), [1, NAN, NAN, NAN, NAN], stop_loss_pct=5)
    assert (done.trades["exit_bar"][0], done.trades["exit_price"][0]) == (1, 95)
    assert done.equity[1] == pytest.approx(950)


def test_close_fills_watch_the_stop_from_the_next_bar() -> None:
    bars = make_bars([100, 100, 100], low=[90, 99, 94])
    done = sim(bars, [1, NAN, NAN], fill="close", stop_loss_pct=5)
    assert (done.trades["exit_bar"][0], done.trades["exit_price"][0]) == (2, 95)


def test_a_short_stop_sits_above_the_entry() -> None:
    done = sim(stop_bars(100, 106, 99), [-1, NAN, NAN, NAN, NAN], allow_short=True, stop_loss_pct=5)
    assert done.trades["exit_price"][0] == pytest.approx(105)
    assert done.trades["pnl"][0] == pytest.approx(-50)


@pytest.mark.parametrize(
    ("config", "units"),
    [
        pytest.param({"sizing": "fraction", "size": 0.5}, 50, id="half-the-cash"),
        pytest.param({"sizing": "units", "size": 30}, 30, id="fixed-units"),
        pytest.param({"fractional": True}, 300, id="fractional-all-in"),
    ],
)
def test_sizing_modes(config: dict[str, Any], units: float) -> None:
    price = 10 if "sizing" in config else 10 / 3
    done = sim(make_bars([price] * 3), [1, NAN, NAN], **config)
    assert done.trades["size"][0] == pytest.approx(units)


def test_a_target_of_one_half_halves_the_position() -> None:
    done = sim(make_bars([10] * 3), [0.5, NAN, NAN])
    assert done.trades["size"][0] == 50


def test_fixed_units_the_cash_cannot_pay_for_are_skipped() -> None:
    done = sim(make_bars([10, 10, 10, 100, 100]), [1, 0, 1, NAN, NAN], sizing="units", size=60)
    np.testing.assert_array_equal(done.trades["entry_bar"], [1])
    assert done.skipped == 1


def test_no_affordable_unit_at_all_is_an_error_that_suggests_fractional_units() -> None:
    bars = make_bars([20_000.0] * 5)
    with pytest.raises(InputError, match=r"one whole unit of TEST.*--fractional"):
        run([bars], get_strategy("buy_and_hold"), BacktestConfig(cash=10_000))


def test_equity_at_zero_stops_the_backtest() -> None:
    bars = make_bars([100, 100, 150, 250, 100])
    done = sim(bars, [-1, NAN, NAN, NAN, NAN], allow_short=True, sizing="units", size=10)
    np.testing.assert_allclose(done.equity, [1000, 1000, 500, 0, 0])
    assert done.trades["reason"].tolist() == [4]  # ruin, at the close of bar 3
    assert done.trades["exit_bar"].tolist() == [3]


def test_several_symbols_share_the_cash_and_sum_their_equity() -> None:
    one = make_bars([10, 10, 20, 20], symbol="AAA")
    two = make_bars([50, 50, 25], symbol="BBB", start_us=one.ts[0] + DAY_US // 2)
    result = run([one, two], get_strategy("buy_and_hold"), BacktestConfig(cash=1000))
    assert result.symbols == ["AAA", "BBB"]
    # AAA: 50 units from bar 1; BBB: 10 units from its bar 1 (ts + 1.5 days)
    assert len(result.ts) == 7
    np.testing.assert_allclose(result.equity, [1000, 1000, 1000, 1000, 1500, 1250, 1250])
    assert result.trades.column("symbol").to_pylist() == ["AAA", "BBB"]
    assert result.stats["buy_hold_return_pct"] == pytest.approx((1.0 - 0.5) / 2 * 100)


def test_too_few_bars_for_the_strategy_windows_is_a_clear_error() -> None:
    bars = make_bars(np.linspace(10, 20, 20))
    with pytest.raises(
        InputError,
        match=r"sma_cross\(fast=10, slow=30\) needs at least 31 "
        r"bars, but TEST has 20",
    ):
        run([bars], get_strategy("sma_cross"))


def test_nan_prices_are_a_data_error_naming_the_bar() -> None:
    bars = make_bars([10, 11, 11, 12])
    bars.close[2] = NAN
    with pytest.raises(DataError, match="TEST: close is nan at 2024-01-03T00:00:00Z"):
        run([bars], get_strategy("buy_and_hold"))


def test_unordered_bar_times_are_a_data_error() -> None:
    bars = make_bars([10, 11, 12])
    bars.ts[2] = bars.ts[0]
    with pytest.raises(DataError, match="not increasing at 2024-01-01"):
        run([bars], get_strategy("buy_and_hold"))


def test_no_bars_at_all_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no bars"):
        run([], get_strategy("buy_and_hold"))


def test_signals_of_the_wrong_length_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="expected"):
        sim(make_bars([10, 11]), [1.0])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"cash": 0}, "cash must be positive"),
        ({"commission_bps": -1}, "commission must not be negative"),
        ({"sizing": "fraction", "size": 1.5}, "at most 1"),
        ({"stop_loss_pct": 100}, "stop-loss must be between 0 and 100"),
        ({"take_profit_pct": 0}, "take-profit must be positive"),
        ({"fill": "vwap"}, "fill must be open or close"),
    ],
)
def test_bad_settings_are_rejected_with_the_reason(config: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        BacktestConfig(**config)


def test_equity_table_has_drawdown_from_the_running_peak() -> None:
    result = run(
        [make_bars([10, 10, 20, 10, 30])], get_strategy("buy_and_hold"), BacktestConfig(cash=100)
    )
    table = result.equity_table()
    assert table.column_names == ["ts", "equity", "drawdown"]
    np.testing.assert_allclose(table.column("drawdown").to_numpy(), [0, 0, 0, -0.5, 0])


def test_the_running_product_for_fractional_units_equals_the_trade_by_trade_loop() -> None:
    """Fractional all-in sizing without a fixed fee skips the loop; both give the same sizes."""
    from tests.backtest.helpers import goog

    strategy = get_strategy("sma_cross", {"fast": 5, "slow": 15})
    rules = {
        "fractional": True,
        "allow_short": True,
        "commission_bps": 10,
        "sizing": "fraction",
        "size": 0.7,
    }
    product = run([goog()], strategy, BacktestConfig(**rules))
    loop = run([goog()], strategy, BacktestConfig(**rules, commission_fixed=1e-12))
    np.testing.assert_allclose(
        product.trades.column("size").to_numpy(), loop.trades.column("size").to_numpy(), rtol=1e-9
    )
    np.testing.assert_allclose(product.equity, loop.equity, rtol=1e-9)


def test_the_indicator_cache_is_bounded_and_keeps_the_recent_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from marketlake.backtest import data

    monkeypatch.setattr(data, "MEMO_BYTES", 3 * 8_000)
    bars = data.synthetic_bars(
        ["X"], "1h", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 12, tzinfo=UTC)
    )
    one = data.split_symbols(bars)[0]
    calls: list[int] = []

    def compute(i: int) -> np.ndarray[Any, Any]:
        calls.append(i)
        return np.full(1000, float(i))  # 8,000 bytes

    for i in range(5):
        one.memo(("x", i), lambda i=i: compute(i))
    assert calls == [0, 1, 2, 3, 4]
    one.memo(("x", 4), lambda: compute(99))  # still cached
    one.memo(("x", 2), lambda: compute(98))  # still cached, now the most recent
    one.memo(("x", 0), lambda: compute(0))  # evicted long ago: computed again
    assert calls == [0, 1, 2, 3, 4, 0]
    assert sum(one._sizes.values()) <= 3 * 8_000
    assert ("x", 2) in one._cache
    assert ("x", 3) not in one._cache
