"""The shipped config/alert_rules.yml and config/portfolio.yml: the loaders accept them,
and on the demo's price path (the mirror's trades) the sample rule fires."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from marketlake.config import Settings
from marketlake.stream.alerts import RuleSet, load_rule_file
from marketlake.stream.events import Batch, trades_table
from marketlake.stream.pipeline import Pipeline
from marketlake.stream.portfolio import Portfolio
from marketlake.stream.worker import analytics_config
from marketlake.tools.binance_stream import MINUTE_MS, BinanceStream
from marketlake.tools.mirror import synthetic_source

CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_the_sample_files_load() -> None:
    rules = load_rule_file(CONFIG / "alert_rules.yml")
    assert {r.id for r in rules} >= {"btc-fast-move"}
    held = Portfolio.load(CONFIG / "portfolio.yml")
    assert {p.symbol for p in held.positions} == {"BTCUSDT", "ETHUSDT"}
    valued = held.valuation({"BTCUSDT": 45_000.0, "ETHUSDT": 17_000.0})
    assert valued["total_unrealized_pnl"] == 0.5 * (45_000 - 44_000) + -2 * (17_000 - 17_500)


def test_the_sample_rule_fires_on_the_mirrors_trades() -> None:
    """An hour of the mirror's BTCUSDT trades through the live pipeline with the shipped
    rules: btc-fast-move fires, and only as often as its cooldown allows."""
    rules = RuleSet(tuple(load_rule_file(CONFIG / "alert_rules.yml")))
    pipeline = Pipeline(analytics_config(Settings()), rules)
    stream = BinanceStream(synthetic_source)
    start = int(datetime(2024, 3, 4, 9, tzinfo=UTC).timestamp() * 1000)
    fired = []
    for minute_ms in range(start, start + 60 * MINUTE_MS, MINUTE_MS):
        minute = stream.minute("BTCUSDT", minute_ms)
        assert minute is not None
        table = trades_table(
            "BTCUSDT",
            [t * 1000 for t in minute.times],
            [float(p) for p in minute.prices],
            [s / 1e8 for s in minute.sizes],
            ["sell" if m else "buy" for m in minute.maker],
            [str(minute.first_id + i) for i in range(len(minute.times))],
            "binance",
        )
        pipeline.process(Batch("trade", "BTCUSDT", table))
        fired += pipeline.take().alerts
    moves = [a for a in fired if a.rule_id == "btc-fast-move"]
    assert len(moves) >= 3, f"the sample rule fired {len(moves)} times in an hour"
    assert len(moves) <= 30, len(moves)  # cooldown 2m
    assert moves[0].message is not None
    assert moves[0].message.startswith("BTCUSDT moved ")
