"""Streaming analytics equal the batch (pandas) computation on the same data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marketlake.errors import ConfigError
from marketlake.stream.analytics import (
    METRIC_NAMES,
    Analytics,
    AnalyticsConfig,
    SymbolAnalytics,
)
from marketlake.stream.portfolio import Portfolio

WINDOW = 12
START_US = 1_709_596_800_000_000 - 40 * 60_000_000  # 40 minutes before 2024-03-05 00:00 UTC


def _trades(n: int = 3000, seed: int = 7) -> pd.DataFrame:
    """A random walk with irregular times, empty minutes, a long gap and a day change."""
    rng = np.random.default_rng(seed)
    steps = rng.exponential(2.5, n) * 1e6
    steps[n // 3] = 30 * 60e6  # a 30-minute silence: longer than window + lookback
    steps[n // 2] = 4 * 60e6
    ts = START_US + np.cumsum(steps).astype(np.int64)
    price = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    size = rng.exponential(1.0, n)
    return pd.DataFrame({"ts": ts, "price": price, "size": size})


def _stream(trades: pd.DataFrame, config: AnalyticsConfig, lookback: int = 5) -> pd.DataFrame:
    state = SymbolAnalytics("TEST", config)
    state.ensure_lookback(lookback)
    rows = []
    for ts, price, size in trades.itertuples(index=False):
        assert state.update(int(ts), float(price), float(size))
        rows.append({**state.values(), f"pct_{lookback}": state.pct_change(lookback)})
    return pd.DataFrame(rows, index=pd.to_datetime(trades["ts"], unit="us", utc=True))


def _batch_buckets(trades: pd.DataFrame, window: int, lookback: int, ppy: float) -> pd.DataFrame:
    """The rolling, bucket-level metrics as pandas computes them from scratch."""
    frame = trades.set_index(pd.to_datetime(trades["ts"], unit="us", utc=True))
    close = frame["price"].resample("1min").last().ffill()
    volume = frame["size"].resample("1min").sum().fillna(0.0)
    log_ret = np.log(close).diff()
    rolling_dd = close / close.rolling(window, min_periods=1).max() - 1
    return pd.DataFrame(
        {
            "return": close.pct_change(),
            "volatility": log_ret.rolling(window, min_periods=2).std() * math.sqrt(ppy),
            "rolling_drawdown": rolling_dd,
            "rolling_max_drawdown": rolling_dd.rolling(window, min_periods=1).min(),
            "bucket_volume": volume,
            "avg_bucket_volume": volume.shift(1).rolling(window - 1, min_periods=1).mean(),
            f"pct_{lookback}": (close / close.shift(lookback) - 1) * 100,
        }
    )


def test_streaming_rolling_metrics_equal_pandas_at_every_bucket_close() -> None:
    """At the last trade of each minute the rolling metrics equal pandas' rolling ones."""
    trades = _trades()
    config = AnalyticsConfig(window=WINDOW, bucket="1m")
    streamed = _stream(trades, config)
    last_of_bucket = streamed.groupby(streamed.index.floor("1min")).tail(1)
    last_of_bucket.index = last_of_bucket.index.floor("1min")
    batch = _batch_buckets(trades, WINDOW, 5, config.annualisation).loc[last_of_bucket.index]
    for column in batch.columns:
        got = last_of_bucket[column].astype(float)
        np.testing.assert_allclose(got, batch[column], rtol=1e-9, atol=1e-12, err_msg=column)


def test_streaming_running_metrics_equal_pandas_at_every_trade() -> None:
    """Drawdown, max drawdown, daily VWAP and daily volume match at every single trade."""
    trades = _trades()
    streamed = _stream(trades, AnalyticsConfig(window=WINDOW))
    price, size = trades["price"], trades["size"]
    day = trades["ts"] // 86_400_000_000
    drawdown = price / price.cummax() - 1
    expected = {
        "drawdown": drawdown,
        "max_drawdown": drawdown.cummin(),
        "vwap": (price * size).groupby(day).cumsum() / size.groupby(day).cumsum(),
        "volume": size.groupby(day).cumsum(),
        "price": price,
    }
    assert day.nunique() == 2
    for name, values in expected.items():
        np.testing.assert_allclose(
            streamed[name].to_numpy(float), values.to_numpy(float), rtol=1e-12, err_msg=name
        )


def test_first_observation_has_no_return_or_volatility() -> None:
    state = SymbolAnalytics("X", AnalyticsConfig(window=5))
    state.update(START_US, 10.0, 2.0)
    values = state.values()
    assert values["return"] is None
    assert values["volatility"] is None
    assert values["avg_bucket_volume"] is None
    assert values["vwap"] == 10.0
    assert set(values) == set(METRIC_NAMES)


def test_observation_older_than_the_current_bucket_is_ignored_and_counted() -> None:
    state = SymbolAnalytics("X", AnalyticsConfig(window=5))
    state.update(START_US + 120_000_000, 10.0, 1.0)
    assert not state.update(START_US, 99.0, 1.0)
    assert state.price == 10.0
    assert state.late == 1


def test_pct_change_needs_enough_history() -> None:
    state = SymbolAnalytics("X", AnalyticsConfig(window=3))
    state.update(START_US, 10.0, 1.0)
    assert state.pct_change(1) is None
    state.update(START_US + 60_000_000, 11.0, 1.0)
    assert state.pct_change(1) == pytest.approx(10.0)
    assert state.pct_change(0) is None


def test_analytics_keeps_one_state_per_symbol_and_grows_lookback() -> None:
    analytics = Analytics(AnalyticsConfig(window=3))
    first = analytics.get("AAA")
    assert analytics.get("AAA") is first
    analytics.ensure_lookback(10)
    for minute in range(12):
        first.update(START_US + minute * 60_000_000, 100.0 + minute, 1.0)
    assert first.pct_change(10) == pytest.approx((111 / 101 - 1) * 100)
    assert analytics.get("BBB")._closes.maxlen == 10
    assert analytics.symbols() == ["AAA", "BBB"]
    analytics.drop("AAA")
    assert "AAA" not in analytics


def test_explicit_periods_per_year_is_used_for_annualisation() -> None:
    assert AnalyticsConfig(bucket="1d", periods_per_year=252).annualisation == 252
    assert AnalyticsConfig(bucket="1h").annualisation == 8760


def test_portfolio_values_positions_at_latest_prices(tmp_path: Path) -> None:
    path = tmp_path / "portfolio.yml"
    path.write_text(
        "positions:\n  - {symbol: btcusdt, quantity: 0.5, average_price: 60000}\n"
        "  - {symbol: ETHUSDT, quantity: -2, average_price: 3000}\n"
        "  - {symbol: SOLUSDT, quantity: 10, average_price: 100}\n"
    )
    value = Portfolio.load(path).valuation({"BTCUSDT": 62000.0, "ETHUSDT": 3100.0})
    btc, eth, sol = value["positions"]
    assert btc["unrealized_pnl"] == 1000.0
    assert btc["unrealized_pnl_pct"] == pytest.approx(1000 / 30000 * 100)
    assert eth["unrealized_pnl"] == -200.0
    assert eth["market_value"] == -6200.0
    assert sol["unrealized_pnl"] is None
    assert value["total_unrealized_pnl"] == 800.0
    assert value["total_cost"] == 30000 - 6000 + 1000


def test_missing_portfolio_file_is_empty(tmp_path: Path) -> None:
    assert Portfolio.load(tmp_path / "none.yml").positions == ()


def test_bad_portfolio_file_names_position_and_field(tmp_path: Path) -> None:
    path = tmp_path / "portfolio.yml"
    path.write_text("positions:\n  - {symbol: BTCUSDT, quantity: 1, average_price: -3}\n")
    with pytest.raises(ConfigError, match=r"positions\.0\.average_price"):
        Portfolio.load(path)
    path.write_text("positions: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Portfolio.load(path)


def test_batches_give_the_same_values_as_one_event_at_a_time() -> None:
    """update_many over random batch sizes equals update per event, event by event."""
    trades = _trades(2500, seed=3)
    late = trades.iloc[[100]].assign(ts=trades["ts"].iloc[100] - 10 * 60_000_000)
    trades = pd.concat([trades.iloc[:700], late, trades.iloc[700:]], ignore_index=True)
    config = AnalyticsConfig(window=WINDOW)
    one, many = SymbolAnalytics("X", config), SymbolAnalytics("X", config)
    one.ensure_lookback(5)
    many.ensure_lookback(5)
    rng = np.random.default_rng(5)
    start = 0
    names = (
        "price",
        "return",
        "volatility",
        "drawdown",
        "rolling_drawdown",
        "bucket_volume",
        "avg_bucket_volume",
    )
    while start < len(trades):
        chunk = trades.iloc[start : start + int(rng.integers(1, 400))]
        start += len(chunk)
        expected = []
        for ts, price, size in chunk.itertuples(index=False):
            if one.update(int(ts), float(price), float(size)):
                expected.append([*(one.values()[k] for k in names), one.pct_change(5)])
        got = many.update_many(
            chunk["ts"].to_numpy(),
            chunk["price"].to_numpy(),
            chunk["size"].to_numpy(),
            lookbacks=[5],
        )
        if not expected:
            assert got is None
            continue
        assert got is not None
        arrays = [
            got.price,
            got.ret,
            got.volatility,
            got.drawdown,
            got.rolling_drawdown,
            got.bucket_volume,
            got.avg_bucket_volume,
            got.pct[5],
        ]
        np.testing.assert_allclose(
            np.array(arrays, dtype=float), np.array(expected, dtype=float).T, rtol=1e-12, atol=1e-15
        )
    assert many.late == one.late == 1
    assert many.values() == pytest.approx(one.values(), rel=1e-12, nan_ok=True)
