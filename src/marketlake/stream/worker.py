"""``marketlake worker``: consume the raw topic, build bars, run analytics and alerts, persist.

The hot path never waits for the store. One round: fetch up to
``worker_fetch_entries`` bus entries → run every batch through the
:class:`~marketlake.stream.pipeline.Pipeline` → publish its alerts at once →
hand the round to the :class:`Writer` → fetch the next. The writer, a task of
its own, stores alerts, trades, bars and metrics (idempotent, in a thread),
publishes the latest metrics and only then acknowledges the entries. When the
store is slower than the feed, the rounds waiting for it are merged into one
write; when more than ``worker_write_backlog_events`` processed events wait,
the hot path stops reading (backpressure: the entries wait in Redis, not in
memory). A crash anywhere before the ack means the entries are delivered
again and the writes change nothing; an alert published before the crash is
published again with the same id (at least once: the dashboard and API
clients keep one alert per id).

The writes are awaited only before something reads the store or moves
shards: a symbol this worker wrote before and must now rebuild from the store,
and giving shards away to a new member.

A dropped bus connection is not fatal: the worker logs one line, lets the
writer store what was processed, forgets its in-memory state and joins the
group again under the same name with backoff; it takes back the shards it held
and reclaims its open entries, and rebuilds each symbol from the store.

SIGTERM (or SIGINT) lets the round in flight finish, waits for the writes,
acknowledges them, gives the shard leases back and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from marketlake.config import Settings
from marketlake.errors import BusError
from marketlake.store.base import Store
from marketlake.stream.alerts import Alert, RuleSource
from marketlake.stream.analytics import AnalyticsConfig
from marketlake.stream.bus import Bus, Consumer, Message
from marketlake.stream.bus.base import backoff
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
    writes: int = 0
    last_round_ms: float = 0.0
    lag_s: float | None = None
    rules: int = 0
    rules_error: str | None = None
    backlog_events: int = 0


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
        self.rules = RuleSource(settings.alert_rules_path(), store)
        rules = self.rules.load()
        self.pipeline = Pipeline(
            analytics_config(settings),
            rules,
            store=store,
            portfolio=Portfolio.load(settings.config_dir / "portfolio.yml"),
        )
        self.stats = WorkerStats(name or default_name(), rules=len(rules.rules))
        self.writer: Writer | None = None
        self._next_reload = time.monotonic() + settings.alerts_reload_s
        self._next_status = 0.0

    async def run(self, stop: asyncio.Event, consumer: Consumer | None = None) -> WorkerStats:
        """Process until ``stop`` is set; what was read is stored and acked before returning."""
        writer = self.writer = Writer(self, self.settings.worker_write_backlog_events)
        writing = asyncio.create_task(writer.run())
        failures = 0
        try:
            while not stop.is_set():
                if consumer is None:
                    consumer = await self._join(stop, failures)
                    if consumer is None:
                        break
                try:
                    await self._rounds(stop, consumer, writer)
                    failures = 0
                except BusError as exc:
                    failures += 1
                    log.warning("worker %s: %s; reconnecting", self.stats.name, exc.message)
                    await consumer.abandon()
                    consumer = None
                    await writer.drain()  # what was processed is stored before rebuilding
                    self.pipeline.take()
                    self.pipeline.forget(
                        [*self.pipeline.analytics.symbols(), *self.pipeline.bars.symbols()]
                    )
                    writer.bus_error = None
            await writer.drain()
        finally:
            await writer.close()
            await writing
            if consumer is not None:
                await consumer.close()
            with contextlib.suppress(BusError):
                await self._status(final=True)
        return self.stats

    async def _join(self, stop: asyncio.Event, failures: int) -> Consumer | None:
        """Join the group again (same name) with backoff; None when stopped meanwhile."""
        while not stop.is_set():
            await _sleep(stop, backoff(failures, initial=0.1, cap=5.0) if failures else 0.0)
            try:
                consumer = await self.bus.consumer(self.group, self.stats.name)
            except BusError as exc:
                failures += 1
                log.warning("worker %s: %s; retrying", self.stats.name, exc.message)
                continue
            log.info("worker %s: joined group %s", self.stats.name, self.group)
            return consumer
        return None

    async def _rounds(self, stop: asyncio.Event, consumer: Consumer, writer: Writer) -> None:
        """Fetch, process and publish until stopped; writes go to ``writer``."""
        while not stop.is_set():
            if writer.bus_error is not None:
                raise writer.bus_error
            if consumer.must_release():
                await writer.drain()
                await consumer.release_surplus()
            messages = await self._fetch(consumer)
            if not messages:
                continue
            if self._rebuilt_symbols(messages) & writer.symbols():
                await writer.drain()  # the store must hold what this worker wrote of them
            started = time.perf_counter()
            out, newest = self._process(messages)
            if out.alerts:
                await self._publish_alerts(out.alerts)
            await writer.put(Round(consumer, messages, out, newest, started))

    async def _fetch(self, consumer: Consumer) -> list[Message]:
        self._reload_rules()
        messages = await consumer.fetch(self.settings.worker_fetch_entries, self.block_ms)
        self.pipeline.forget([s for s in self.pipeline.analytics.symbols() if not consumer.owns(s)])
        if time.monotonic() >= self._next_status:
            await self._status()
        return messages

    def _rebuilt_symbols(self, messages: list[Message]) -> set[str]:
        """Symbols of ``messages`` the pipeline will rebuild from the store."""
        return {
            m.payload.symbol
            for m in messages
            if isinstance(m.payload, Batch) and m.payload.symbol not in self.pipeline.bars
        }

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

    async def write(self, rounds: list[Round]) -> None:
        """Store rounds as one write, publish their metrics, then acknowledge their entries."""
        out = merge([r.out for r in rounds])
        if out.alerts:  # already published; stored before the bulk writes
            alerts = await asyncio.to_thread(insert_alerts, self.store, out.alerts)
            self.stats.alerts += len(alerts)
        trades, bars = await asyncio.to_thread(persist_data, self.store, out)
        self.stats.trades_inserted += trades.inserted
        self.stats.bars_inserted += bars.inserted
        for symbol, values in out.metrics.items():
            await self.bus.publish_event(METRICS_TOPIC, {"symbol": symbol, **values})
        for consumer, messages in _by_consumer(rounds):
            await consumer.ack(messages)
        newest = [r.newest for r in rounds if r.newest is not None]
        if newest:
            self.stats.lag_s = (now_us() - max(newest)) / 1e6
        self.stats.rounds += len(rounds)
        self.stats.writes += 1
        self.stats.entries += sum(len(r.messages) for r in rounds)
        self.stats.last_round_ms = (time.perf_counter() - rounds[-1].started) * 1000
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


@dataclass(slots=True)
class Round:
    """What one fetch produced, waiting to be stored and acknowledged."""

    consumer: Consumer
    messages: list[Message]
    out: Outputs
    newest: int | None
    started: float
    symbols: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.symbols = {m.payload.symbol for m in self.messages if isinstance(m.payload, Batch)}

    @property
    def events(self) -> int:
        return max(1, self.out.events)


class Writer:
    """The worker's store writes, off the hot path (one task).

    :meth:`put` queues a processed round and returns at once unless ``limit``
    events wait unwritten (then it waits: backpressure). :meth:`run` takes every
    queued round, writes them as one, and acknowledges them. A store error ends
    the writer and is raised by the next :meth:`put` or :meth:`drain`; a bus
    error (metrics, ack) is kept in :attr:`bus_error` for the hot path, which
    reconnects: the entries not acknowledged are delivered again.
    """

    def __init__(self, worker: Worker, limit: int) -> None:
        self.worker = worker
        self.limit = limit
        self.bus_error: BusError | None = None
        self._queued: list[Round] = []
        self._writing: list[Round] = []
        self._events = 0
        self._failed: BaseException | None = None
        self._closing = False
        self._changed = asyncio.Condition()

    @property
    def events(self) -> int:
        """Processed events waiting to be stored (queued or being written)."""
        return self._events

    def symbols(self) -> set[str]:
        """Symbols with rounds not yet stored."""
        return set().union(*(r.symbols for r in self._queued + self._writing))

    async def put(self, item: Round) -> None:
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._failed is not None or self._events < self.limit
            )
            self._raise()
            self._queued.append(item)
            self._events += item.events
            self.worker.stats.backlog_events = self._events
            self._changed.notify_all()

    async def drain(self) -> None:
        """Wait until every queued round is stored (and acknowledged, if the bus allows)."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._failed is not None or not (self._queued or self._writing)
            )
            self._raise()

    async def close(self) -> None:
        """Let :meth:`run` return once the queue is empty."""
        async with self._changed:
            self._closing = True
            self._changed.notify_all()

    def _raise(self) -> None:
        if self._failed is not None:
            raise self._failed

    async def run(self) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._queued) or self._closing)
                if not self._queued:
                    return
                self._writing, self._queued = self._queued, []
            try:
                await self.worker.write(self._writing)
            except BusError as exc:  # stored, not acknowledged: delivered again later
                self.bus_error = exc
            except BaseException as exc:
                async with self._changed:
                    self._failed = exc
                    self._writing = []
                    self._changed.notify_all()
                if isinstance(exc, Exception):
                    return
                raise
            async with self._changed:
                self._events -= sum(r.events for r in self._writing)
                self.worker.stats.backlog_events = self._events
                self._writing = []
                self._changed.notify_all()


def merge(outs: list[Outputs]) -> Outputs:
    """Several rounds' outputs as one write (later metrics win; lists concatenated)."""
    if len(outs) == 1:
        return outs[0]
    built = [o.built_bars for o in outs if o.built_bars is not None and o.built_bars.num_rows]
    final = [b for o in outs for b in o.final_bars]
    metrics: dict[str, dict[str, Any]] = {}
    for o in outs:
        metrics.update(o.metrics)
    return Outputs(
        trades=[t for o in outs for t in o.trades],
        final_bars=[_last_per_key(final)] if final else [],
        built_bars=_last_per_key(built) if built else None,
        metrics=metrics,
        alerts=[a for o in outs for a in o.alerts],
        events=sum(o.events for o in outs),
    )


def _last_per_key(tables: list[pa.Table]) -> pa.Table:
    """Bars of ``tables`` with the last row of each (symbol, timeframe, ts) only: one write
    must not touch a row twice (a kline redelivered, a bar rebuilt after a reconnect)."""
    table = pa.concat_tables(tables)
    if len(tables) == 1:
        return table
    keys = ["symbol", "timeframe", "ts"]
    last = (
        table.append_column("_i", pa.array(range(table.num_rows), pa.int64()))
        .group_by(keys, use_threads=False)
        .aggregate([("_i", "max")])
        .column("_i_max")
    )
    return table.take(pc.take(last, pc.sort_indices(last)))


def _by_consumer(rounds: list[Round]) -> list[tuple[Consumer, list[Message]]]:
    groups: dict[int, tuple[Consumer, list[Message]]] = {}
    for r in rounds:
        groups.setdefault(id(r.consumer), (r.consumer, []))[1].extend(r.messages)
    return list(groups.values())


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


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
