"""``marketlake worker``: consume the raw topic, build bars, run analytics and alerts, persist.

One round: fetch up to ``worker_fetch_entries`` bus entries → run every batch
through the :class:`~marketlake.stream.pipeline.Pipeline` → publish its alerts at
once → store the alerts, trades, bars and metrics (idempotent) → publish the
latest metrics → acknowledge the entries. The writes of one round overlap the
fetching and processing of the next. A crash anywhere before the ack means the
entries are delivered again and the writes change nothing; an alert published
before the crash is published again with the same id (at least once: the
dashboard and API clients keep one alert per id).

Alerts are published before the previous round's writes have finished: a
database write can take tens of milliseconds, and an alert is what someone is
waiting for.

SIGTERM (or SIGINT) lets the round in flight finish, acknowledges it, gives
the shard leases back and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from marketlake.config import Settings
from marketlake.store.base import Store
from marketlake.stream.alerts import Alert, RuleSource
from marketlake.stream.analytics import AnalyticsConfig
from marketlake.stream.bus import Bus, Consumer, Message
from marketlake.stream.events import ALERTS_TOPIC, METRICS_TOPIC, Batch, now_us
from marketlake.stream.pipeline import Outputs, Pipeline, insert_alerts, persist_data
from marketlake.stream.portfolio import Portfolio

log = logging.getLogger(__name__)
GROUP = "workers"


def analytics_config(settings: Settings) -> AnalyticsConfig:
    """The analytics configuration the settings describe."""
    return AnalyticsConfig(
        window=settings.analytics_window,
        bucket=settings.analytics_bucket,
        periods_per_year=settings.analytics_periods_per_year,
    )


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(slots=True)
class WorkerStats:
    """What a worker has done, for its status and the CLI."""

    name: str
    rounds: int = 0
    entries: int = 0
    events: int = 0
    trades_inserted: int = 0
    bars_inserted: int = 0
    alerts: int = 0
    last_round_ms: float = 0.0
    lag_s: float | None = None
    rules: int = 0
    rules_error: str | None = None


class Worker:
    """A bus consumer running the live pipeline and persisting its results."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        bus: Bus,
        *,
        name: str | None = None,
        group: str = GROUP,
        block_ms: int = 500,
        on_round: Callable[[WorkerStats], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.group = group
        self.block_ms = block_ms
        self.on_round = on_round
        self.rules = RuleSource(settings.config_dir / "alert_rules.yml", store)
        rules = self.rules.load()
        self.pipeline = Pipeline(
            analytics_config(settings),
            rules,
            store=store,
            portfolio=Portfolio.load(settings.config_dir / "portfolio.yml"),
        )
        self.stats = WorkerStats(name or default_name(), rules=len(rules.rules))
        self._next_reload = time.monotonic() + settings.alerts_reload_s
        self._next_status = 0.0

    async def run(self, stop: asyncio.Event, consumer: Consumer | None = None) -> WorkerStats:
        """Process until ``stop`` is set; the round in flight is finished and acked.

        Rounds overlap by one: while round k is written (in a thread), round
        k+1 is fetched and processed; its writes start after round k's ended.
        Before anything that reads the store or moves shards (a symbol seen
        for the first time, a rebalance) the writes in flight are awaited.
        """
        if consumer is None:
            consumer = await self.bus.consumer(self.group, self.stats.name)
        writing: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                if writing is not None and (writing.done() or consumer.rebalance_due()):
                    await writing
                    writing = None
                messages = await self._fetch(consumer)
                if not messages:
                    continue
                if writing is not None and self._new_symbols(messages):
                    await writing
                    writing = None
                started = time.perf_counter()
                out, newest = self._process(messages)
                if out.alerts:
                    await self._publish_alerts(out.alerts)
                if writing is not None:
                    await writing
                writing = asyncio.create_task(self._write(consumer, messages, out, newest, started))
            if writing is not None:
                await writing
        finally:
            await consumer.close()
            await self._status(final=True)
        return self.stats

    async def _fetch(self, consumer: Consumer) -> list[Message]:
        self._reload_rules()
        messages = await consumer.fetch(self.settings.worker_fetch_entries, self.block_ms)
        self.pipeline.forget([s for s in self.pipeline.analytics.symbols() if not consumer.owns(s)])
        if time.monotonic() >= self._next_status:
            await self._status()
        return messages

    def _new_symbols(self, messages: list[Message]) -> bool:
        return any(
            isinstance(m.payload, Batch) and m.payload.symbol not in self.pipeline.bars
            for m in messages
        )

    def _process(self, messages: list[Message]) -> tuple[Outputs, int | None]:
        """CPU work of a round; the newest trade time (for the lag gauge)."""
        newest: int | None = None
        for batch in coalesce(m.payload for m in messages if isinstance(m.payload, Batch)):
            self.pipeline.process(batch)
            self.stats.events += len(batch)
            if batch.kind == "trade" and len(batch):
                last = batch.table.column("ts")[-1].value
                newest = last if newest is None else max(newest, last)
        return self.pipeline.take(), newest

    async def _write(
        self,
        consumer: Consumer,
        messages: list[Message],
        out: Outputs,
        newest: int | None,
        started: float,
    ) -> None:
        """Store and publish a round's results, then acknowledge its entries."""
        if out.alerts:  # already published; stored before the bulk writes
            alerts = await asyncio.to_thread(insert_alerts, self.store, out.alerts)
            self.stats.alerts += len(alerts)
        trades, bars = await asyncio.to_thread(persist_data, self.store, out)
        for symbol, values in out.metrics.items():
            await self.bus.publish_event(METRICS_TOPIC, {"symbol": symbol, **values})
        await consumer.ack(messages)
        if newest is not None:
            self.stats.lag_s = (now_us() - newest) / 1e6
        self.stats.trades_inserted += trades.inserted
        self.stats.bars_inserted += bars.inserted
        self.stats.rounds += 1
        self.stats.entries += len(messages)
        self.stats.last_round_ms = (time.perf_counter() - started) * 1000
        if self.on_round is not None:
            self.on_round(self.stats)

    async def _publish_alerts(self, alerts: list[Alert]) -> None:
        for alert in {a.id: a for a in alerts}.values():
            await self.bus.publish_event(ALERTS_TOPIC, alert.as_json())

    def _reload_rules(self) -> None:
        if time.monotonic() < self._next_reload:
            return
        self._next_reload = time.monotonic() + self.settings.alerts_reload_s
        rules = self.rules.poll()
        if rules is not None:
            self.pipeline.set_rules(rules)
            self.stats.rules = len(rules.rules)
            log.info("alert rules reloaded: %d rules", len(rules.rules))
        self.stats.rules_error = self.rules.error

    async def _status(self, *, final: bool = False) -> None:
        self._next_status = time.monotonic() + 2.0
        data: dict[str, Any] = {
            **asdict(self.stats),
            "kind": "worker",
            "state": "stopped" if final else "running",
            "updated_us": time.time_ns() // 1000,
        }
        await self.bus.set_status(f"worker:{self.stats.name}", data)


def coalesce(batches: Iterable[Batch]) -> list[Batch]:
    """Each symbol's consecutive trade batches of one role as one batch, in order.

    The pipeline's cost is mostly per batch, and a feed publishes many small ones
    (a few trades every few milliseconds); one round can hold hundreds. A bar
    batch, or trades of another role, ends the symbol's run so its order is kept.
    """
    out: list[Batch] = []
    runs: dict[str, list[Batch]] = {}

    def flush(symbol: str) -> None:
        run = runs.pop(symbol, None)
        if not run:
            return
        first = run[0]
        out.append(
            first
            if len(run) == 1
            else Batch(
                "trade",
                symbol,
                pa.concat_tables([b.table for b in run]),
                first.role,
                first.final,
                run[-1].published_us,
            )
        )

    for batch in batches:
        run = runs.get(batch.symbol)
        if run and (batch.kind != "trade" or batch.role != run[0].role):
            flush(batch.symbol)
        if batch.kind == "trade":
            runs.setdefault(batch.symbol, []).append(batch)
        else:
            out.append(batch)
    for symbol in list(runs):
        flush(symbol)
    return out


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (the round in flight still finishes)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def run_worker(worker: Worker, *, duration_s: float | None = None) -> WorkerStats:
    """Run ``worker`` until SIGTERM/SIGINT (or ``duration_s``), then close its bus."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    if duration_s is not None:
        asyncio.get_running_loop().call_later(duration_s, stop.set)
    try:
        return await worker.run(stop)
    finally:
        await worker.bus.close()
