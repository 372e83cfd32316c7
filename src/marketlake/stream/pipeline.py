"""The live processing path: trades and bars → 1m bars, analytics, alerts → store.

One :class:`Pipeline` is what the worker, ``marketlake stream`` (in-process
bus) and replay run. :meth:`Pipeline.process` is synchronous CPU work on one
batch; :meth:`Pipeline.take` hands over what is to be written and published;
:func:`persist` writes it idempotently (trades on their key, exchange bars
replacing trade-built ones, trade-built bars only where none is stored,
latest metrics upserted, alerts inserted once by id) and returns the alerts
that are new, which are the ones to publish.

Alerts are stored before the data so that the worker can publish them at once:
after a crash the redelivered events find them stored and do not publish them
again. When a symbol is first seen and a store is given, its state is rebuilt from
the store (see :meth:`Pipeline._seed`): this is how a worker continues a
symbol another worker was processing before it died.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from marketlake.schema import TRADE_SCHEMA, from_epoch_us, to_epoch_us
from marketlake.store.base import Store, WriteResult
from marketlake.stream.alerts import Alert, AlertEngine, RuleSet
from marketlake.stream.analytics import DAY_US, Analytics, AnalyticsConfig, Array
from marketlake.stream.bars import BarBuilder
from marketlake.stream.events import Batch
from marketlake.stream.portfolio import Portfolio

SEED_TRADES_US = 60 * 60_000_000
"""How far back stored trades are replayed when a symbol's state is rebuilt."""


@dataclass(slots=True)
class Outputs:
    """What processing produced since the last :meth:`Pipeline.take`."""

    trades: list[pa.Table] = field(default_factory=list)
    final_bars: list[pa.Table] = field(default_factory=list)
    built_bars: pa.Table | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    events: int = 0


@dataclass(slots=True)
class Counters:
    events: int = 0
    trades: int = 0
    bars: int = 0
    skipped: int = 0
    seeded: int = 0


class Pipeline:
    """Bars, analytics and alerts for every symbol one process handles."""

    def __init__(
        self,
        config: AnalyticsConfig,
        rules: RuleSet,
        *,
        store: Store | None = None,
        portfolio: Portfolio | None = None,
        timeframe: str = "1m",
    ) -> None:
        self.config = config
        self.store = store
        self.portfolio = portfolio or Portfolio()
        self.analytics = Analytics(config)
        self.bucket_s = config.bucket_us / 1e6
        self.engine = AlertEngine(rules, self.bucket_s)
        self.bars = BarBuilder(timeframe)
        self.counters = Counters()
        self._out = Outputs()
        self._touched: set[str] = set()
        self.set_rules(rules)

    def set_rules(self, rules: RuleSet) -> None:
        """Switch rules without losing analytics (alert state of unchanged rules stays)."""
        self.engine.set_rules(rules)
        self.analytics.ensure_lookback(rules.max_lookback(self.bucket_s))

    def forget(self, symbols: Sequence[str]) -> None:
        """Drop the state of symbols another worker takes over."""
        for symbol in symbols:
            self.analytics.drop(symbol)
            self.bars.drop(symbol)
            self.engine.forget(symbol)

    # -- processing -------------------------------------------------------------------

    def process(self, batch: Batch) -> None:
        """Run one batch through bars, analytics and alerts."""
        if not len(batch):
            return
        self.counters.events += len(batch)
        self._out.events += len(batch)
        if batch.kind == "trade":
            self._trades(batch)
        else:
            self._bars(batch)

    def _trades(self, batch: Batch) -> None:
        symbol, table = batch.symbol, batch.table
        if symbol not in self.bars and self.store is not None and batch.role != "replay":
            self._seed(symbol, table.column("ts")[0].value)
        self._run_trades(symbol, table, alerts=True)
        if batch.role != "replay":
            self._out.trades.append(table)
        self.counters.trades += table.num_rows

    def _run_trades(self, symbol: str, table: pa.Table, *, alerts: bool) -> None:
        """Trades through the bar builder, then the ones it took through analytics and alerts."""
        bar = self.bars.bar(symbol)
        bar.source = table.column("source")[0].as_py()
        ts = _int64(table.column("ts"))
        price = table.column("price").to_numpy()
        size = table.column("size").to_numpy()
        keep = self.bars.add_many(bar, ts, price, size, table.column("trade_id"))
        if keep is not None:
            self.counters.skipped += int(len(keep) - keep.sum())
            ts, price, size = ts[keep], price[keep], size[keep]
        self._observe(symbol, ts, price, size, None, alerts=alerts)

    def _observe(
        self, symbol: str, ts: Array, price: Array, size: Array, pv: Array | None, *, alerts: bool
    ) -> None:
        if not len(ts):
            return
        armed = self.engine.armed(symbol) if alerts else []
        observed = self.analytics.get(symbol).update_many(
            ts, price, size, pv, lookbacks=self.engine.lookbacks(armed)
        )
        if observed is not None and armed:
            self.engine.check(symbol, observed, armed)
        self._touched.add(symbol)

    def _bars(self, batch: Batch) -> None:
        if not batch.final:
            return  # an in-progress kline: only live viewers care, they read the bus
        symbol, table = batch.symbol, batch.table
        ts = _int64(table.column("ts"))
        if batch.role != "replay":
            if symbol not in self.bars and self.store is not None:
                self._seed(symbol, int(ts[0]))
            self.bars.mark_final(symbol, int(ts.min()), int(ts.max()) + self.bars.step_us)
            self._out.final_bars.append(table)
        if batch.role in ("backfill", "replay"):
            self._observe_bars(symbol, table, alerts=True)
        self.counters.bars += len(ts)

    def _observe_bars(self, symbol: str, table: pa.Table, *, alerts: bool) -> None:
        """Bars as observations: the close at the bar's time, volume-weighted by its vwap."""
        close = table.column("close").to_numpy()
        volume = table.column("volume").to_numpy()
        vwap = table.column("vwap").to_numpy()
        pv = np.where(np.isnan(vwap), close, vwap) * volume
        self._observe(symbol, _int64(table.column("ts")), close, volume, pv, alerts=alerts)

    # -- rebuilding a symbol's state from the store -------------------------------------

    def _seed(self, symbol: str, first_ts: int) -> None:
        """Warm analytics from stored bars, then replay stored trades after the last bar.

        The trade replay closes (and so writes) bars the previous owner could not
        finish, fills the open bar with the trades it had stored, and re-fires
        alerts with the same ids (the store keeps them once).
        """
        assert self.store is not None
        self.counters.seeded += 1
        step = self.bars.step_us
        first_minute = first_ts - first_ts % step
        last = self.store.latest_bar(symbol, self.bars.timeframe)
        since = first_minute - SEED_TRADES_US
        if last is not None:
            since = max(since, to_epoch_us(last["ts"]) + step)
        history = self.store.last_alert_per_rule(symbol)
        self.engine.seed(
            symbol, {r["rule_id"]: (to_epoch_us(r["ts"]), int(r["seq"])) for r in history}
        )
        warm = self.config.window + self.analytics.lookback
        lo = min(since - since % DAY_US, since - warm * self.config.bucket_us)
        bars = self.store.read_bars(
            symbol, self.bars.timeframe, from_epoch_us(lo), from_epoch_us(since)
        ).table
        if bars.num_rows:
            self._observe_bars(symbol, bars, alerts=False)
        trades = self.store.read_trades(symbol, start=from_epoch_us(since))
        if trades.num_rows:
            self._run_trades(symbol, trades.cast(TRADE_SCHEMA), alerts=True)

    # -- handing over ------------------------------------------------------------------

    def take(self) -> Outputs:
        """Everything produced since the last call; metrics of the symbols touched."""
        out, self._out = self._out, Outputs()
        out.built_bars = self.bars.take_closed()
        out.alerts = self.engine.drain()
        prices: dict[str, float] = {}
        for symbol in self._touched:
            state = self.analytics.get(symbol)
            out.metrics[symbol] = {"ts": state.ts_us, **state.values()}
            prices[symbol] = state.price
        held = {p.symbol for p in self.portfolio.positions}
        if held & self._touched:
            for row in self.portfolio.valuation(prices)["positions"]:
                if row["symbol"] in self._touched:
                    out.metrics[row["symbol"]]["unrealized_pnl"] = row["unrealized_pnl"]
        self._touched = set()
        return out


@dataclass(slots=True)
class Persisted:
    """What :func:`persist` wrote: the new alerts and the trade and bar counts."""

    alerts: list[Alert]
    trades: WriteResult
    bars: WriteResult


def persist(store: Store, out: Outputs) -> Persisted:
    """Write one :class:`Outputs` idempotently: alerts first, then :func:`persist_data`."""
    alerts = insert_alerts(store, out.alerts) if out.alerts else []
    trades, bars = persist_data(store, out)
    return Persisted(alerts, trades, bars)


def persist_data(store: Store, out: Outputs) -> tuple[WriteResult, WriteResult]:
    """Write trades, bars (exchange bars first, so they win) and metrics in one transaction."""
    bars = trades = WriteResult()
    with store.transaction():
        if out.final_bars:
            bars += store.write_bars(pa.concat_tables(out.final_bars), on_conflict="replace")
        if out.trades:
            trades = store.write_trades(pa.concat_tables(out.trades))
        if out.built_bars is not None and out.built_bars.num_rows:
            bars += store.write_bars(out.built_bars)
        if out.metrics:
            upsert_metrics(store, out.metrics)
    return trades, bars


def upsert_metrics(store: Store, metrics: dict[str, dict[str, Any]]) -> None:
    """Store the latest value of every metric (one row per symbol and name)."""
    rows: list[tuple[str, str, datetime, Any]] = []
    for symbol, values in metrics.items():
        ts = from_epoch_us(int(values["ts"]))
        rows += [(symbol, name, ts, value) for name, value in values.items() if name != "ts"]
    store.write_metrics(rows)


def insert_alerts(store: Store, alerts: list[Alert]) -> list[Alert]:
    """Store alerts whose id is not stored yet; return those, in time order."""
    unique = {a.id: a for a in alerts}
    inserted = store.add_alerts([a.row() for a in unique.values()]) if unique else []
    return sorted((unique[x] for x in inserted), key=lambda a: (a.ts_us, a.symbol, a.rule_id))


def _int64(column: pa.ChunkedArray) -> Array:
    """Epoch microseconds of a timestamp column as an int64 array."""
    values: Array = column.cast(pa.int64()).to_numpy()
    return values
