"""The processing path: bars from trades, exactly-once storage, takeover and exchange bars.

The persistence tests run on every store backend (the SQL of metrics and alerts is shared)."""

from __future__ import annotations

import itertools
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from marketlake.store import Store
from marketlake.stream.alerts import RuleSet, parse_rule
from marketlake.stream.analytics import AnalyticsConfig
from marketlake.stream.events import Batch, bars_table
from marketlake.stream.pipeline import Pipeline, persist
from marketlake.stream.portfolio import Portfolio, Position
from tests.stream.helpers import MIN_US, T0_US, batches_of, make_trades, reference_bars, stored_bars

RULES = RuleSet((parse_rule({"id": "cross", "kind": "price_cross", "level": 100.0}),))


def _pipeline(store: Store | None, **kw: object) -> Pipeline:
    return Pipeline(AnalyticsConfig(window=10), RULES, store=store, **kw)  # type: ignore[arg-type]


def _run(pipeline: Pipeline, store: Store, batches: list[Batch]) -> list[str]:
    """Process and persist batch by batch (like a worker acking each entry); new alert ids."""
    published: list[str] = []
    for batch in batches:
        pipeline.process(batch)
        published += [a.id for a in persist(store, pipeline.take()).alerts]
    return published


def _assert_bars_equal(store: Store, trades: pa.Table) -> None:
    symbols = sorted(set(trades.column("symbol").to_pylist()))
    got = stored_bars(store.read_bars(symbols, "1m").table)
    expected = reference_bars(trades)
    assert list(got.index) == list(expected.index)
    pd.testing.assert_frame_equal(
        got, expected, check_dtype=False, check_names=False, check_index_type=False, rtol=1e-12
    )


def test_trades_become_exact_bars_metrics_and_alerts(store: Store) -> None:
    trades = pa.concat_tables(
        [make_trades("BTCUSDT", 1500, seed=1), make_trades("ETHUSDT", 900, seed=2)]
    )
    pipeline = _pipeline(store)
    alerts = _run(
        pipeline,
        store,
        batches_of(trades.slice(0, 1500), 200) + batches_of(trades.slice(1500), 200),
    )
    assert store.read_trades("BTCUSDT").num_rows == 1500
    _assert_bars_equal(store, trades)
    stored = store.select_rows("alerts", order_by="ts")
    assert sorted(a["id"] for a in stored) == sorted(alerts)
    assert len(alerts) > 5
    prices = trades.slice(0, 1500).column("price").to_pylist()
    crossings = sum((a < 100) != (b < 100) for a, b in itertools.pairwise(prices))
    assert sum(a["symbol"] == "BTCUSDT" for a in stored) == crossings
    metrics = {r["name"]: r["value"] for r in store.select_rows("metrics", {"symbol": "BTCUSDT"})}
    assert metrics["price"] == prices[-1]
    assert metrics["volume"] == pytest.approx(sum(trades.slice(0, 1500).column("size").to_pylist()))


def test_processing_every_batch_twice_stores_and_publishes_everything_once(store: Store) -> None:
    trades = make_trades("BTCUSDT", 1200, seed=3)
    batches = batches_of(trades, 100)
    doubled = [b for batch in batches for b in (batch, batch)]
    alerts = _run(_pipeline(store), store, doubled)
    assert store.read_trades("BTCUSDT").num_rows == 1200
    _assert_bars_equal(store, trades)
    assert len(alerts) == len(set(alerts)) == len(store.select_rows("alerts"))


def test_second_worker_takes_over_mid_minute_without_losing_or_doubling(store: Store) -> None:
    """Worker A stores four batches then dies having acked three; B gets the fourth again."""
    trades = make_trades("BTCUSDT", 1000, seed=4)
    batches = batches_of(trades, 100)
    first = _run(_pipeline(store), store, batches[:4])
    second = _run(_pipeline(store), store, batches[3:])
    assert store.read_trades("BTCUSDT").num_rows == 1000
    _assert_bars_equal(store, trades)
    stored = {a["id"] for a in store.select_rows("alerts")}
    assert not set(first) & set(second)
    assert stored == set(first) | set(second)
    solo = Pipeline(AnalyticsConfig(window=10), RULES)
    for batch in batches:
        solo.process(batch)
    assert {a.id for a in solo.take().alerts} == stored


def test_exchange_final_bars_replace_trade_built_ones(store: Store) -> None:
    trades = make_trades("BTCUSDT", 400, seed=5)
    pipeline = _pipeline(store)
    _run(pipeline, store, batches_of(trades, 400))
    built = store.read_bars("BTCUSDT", "1m").table
    first_ts = built.column("ts").cast(pa.int64())[0].as_py()
    exchange = bars_table(
        "BTCUSDT",
        "1m",
        "binance",
        {
            "ts": [first_ts],
            "open": [1.0],
            "high": [2.0],
            "low": [0.5],
            "close": [1.5],
            "volume": [10.0],
            "trades": [3],
            "vwap": [1.2],
        },
    )
    _run(pipeline, store, [Batch("bar", "BTCUSDT", exchange, "live", final=True)])
    after = store.read_bars("BTCUSDT", "1m").table
    assert after.num_rows == built.num_rows
    assert after.slice(0, 1).to_pylist()[0]["close"] == 1.5
    assert after.slice(1).equals(built.slice(1))


def test_final_bar_for_the_open_minute_keeps_later_trades_of_it_out(duck: Store) -> None:
    trades = make_trades("BTCUSDT", 300, seed=6)
    pipeline = _pipeline(duck)
    _run(pipeline, duck, batches_of(trades.slice(0, 10), 10))
    minute = T0_US
    exchange = bars_table(
        "BTCUSDT",
        "1m",
        "binance",
        {
            "ts": [minute],
            "open": [1.0],
            "high": [2.0],
            "low": [0.5],
            "close": [1.5],
            "volume": [10.0],
            "trades": [3],
            "vwap": [1.2],
        },
    )
    backfill = Batch("bar", "BTCUSDT", exchange, "backfill", final=True)
    _run(pipeline, duck, [backfill, *batches_of(trades.slice(10), 290)])
    rows = duck.read_bars("BTCUSDT", "1m").table.to_pylist()
    assert rows[0]["close"] == 1.5
    assert len(rows) == len(reference_bars(trades))
    assert duck.read_trades("BTCUSDT").num_rows == 300


def test_backfill_and_replay_bars_feed_analytics_but_in_progress_klines_do_not() -> None:
    pipeline = Pipeline(AnalyticsConfig(window=5), RuleSet())
    bars = bars_table(
        "BTCUSDT",
        "1m",
        "binance",
        {
            "ts": [T0_US, T0_US + MIN_US],
            "open": [1.0, 2.0],
            "high": [2.0, 3.0],
            "low": [0.5, 1.0],
            "close": [1.5, 2.5],
            "volume": [10.0, 30.0],
            "trades": [3, 4],
            "vwap": [1.2, None],
        },
    )
    pipeline.process(Batch("bar", "BTCUSDT", bars, "live", final=False))
    assert pipeline.take().metrics == {}
    pipeline.process(Batch("bar", "BTCUSDT", bars, "replay", final=True))
    out = pipeline.take()
    assert out.final_bars == []
    assert out.metrics["BTCUSDT"]["price"] == 2.5
    assert out.metrics["BTCUSDT"]["vwap"] == pytest.approx((1.2 * 10 + 2.5 * 30) / 40)


def test_portfolio_positions_get_unrealized_pnl_metrics() -> None:
    portfolio = Portfolio((Position(symbol="BTCUSDT", quantity=2, average_price=90),))
    pipeline = _pipeline(None, portfolio=portfolio)
    trades = make_trades("BTCUSDT", 50)
    pipeline.process(Batch("trade", "BTCUSDT", trades))
    metrics = pipeline.take().metrics["BTCUSDT"]
    assert metrics["unrealized_pnl"] == pytest.approx((trades.column("price")[-1].as_py() - 90) * 2)


def test_forgetting_a_symbol_rebuilds_it_from_the_store(duck: Store) -> None:
    trades = make_trades("BTCUSDT", 600, seed=7)
    batches = batches_of(trades, 100)
    pipeline = _pipeline(duck)
    _run(pipeline, duck, batches[:3])
    pipeline.forget(["BTCUSDT"])
    _run(pipeline, duck, batches[3:])
    _assert_bars_equal(duck, trades)
    assert pipeline.counters.seeded == 2


def test_coalesced_rounds_give_what_batch_by_batch_processing_gives() -> None:
    """A worker merges each symbol's consecutive trade batches; nothing it computes changes."""
    from marketlake.stream.worker import coalesce

    btc = batches_of(make_trades("BTCUSDT", 1200, seed=1), 7)
    eth = batches_of(make_trades("ETHUSDT", 800, seed=2), 5)
    late = batches_of(
        make_trades("BTCUSDT", 30, seed=3, start_us=T0_US + 2_000 * 1_000_000, first_id=5000),
        10,
        role="backfill",
    )
    kline = Batch(
        "bar",
        "ETHUSDT",
        bars_table(
            "ETHUSDT",
            "1m",
            "binance",
            {
                "ts": [T0_US + 600 * 1_000_000],
                "open": [100.0],
                "high": [101.0],
                "low": [99.0],
                "close": [100.5],
                "volume": [3.0],
                "trades": [4],
                "vwap": [100.2],
            },
        ),
        "live",
        final=False,
    )
    interleaved = [b for pair in itertools.zip_longest(btc, eth) for b in pair if b is not None]
    interleaved[100:100] = [kline]
    interleaved += late

    merged = coalesce(interleaved)
    assert len(merged) < 10
    assert [b.kind for b in merged].count("bar") == 1
    for symbol in ("BTCUSDT", "ETHUSDT"):  # each symbol's rows in their original order

        def ids(batches: list[Batch], symbol: str = symbol) -> list[str]:
            return [
                i
                for b in batches
                if b.symbol == symbol and b.kind == "trade"
                for i in b.table.column("trade_id").to_pylist()
            ]

        assert ids(merged) == ids(interleaved)
    eth_kinds = [b.kind for b in merged if b.symbol == "ETHUSDT"]
    assert eth_kinds == ["trade", "bar", "trade"]  # the kline splits ETH's run
    assert [b.role for b in merged if b.symbol == "BTCUSDT"] == ["live", "backfill"]

    def outputs(batches: list[Batch]) -> tuple[list[str], dict[str, Any], int]:
        pipeline = _pipeline(None)
        alerts: list[str] = []
        metrics: dict[str, Any] = {}
        for batch in batches:
            pipeline.process(batch)
            out = pipeline.take()
            alerts += [a.id for a in out.alerts]
            metrics.update(out.metrics)
        return sorted(alerts), metrics, pipeline.counters.events

    assert outputs(merged) == outputs(interleaved)
