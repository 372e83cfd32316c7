"""Ingest jobs: fetch from a provider → validate → idempotent write → roll up, as a job.

A job fetches its symbols concurrently (``concurrency`` at a time, default 4) and
hands every page to one writer, which runs the store work in a thread while the
fetches go on. The writer writes once ``batch_rows`` bars are waiting (of all
symbols together) or a symbol's fetch has ended, taking everything handed over
meanwhile: the batch passes the quality rules (:class:`marketlake.quality.checks.IngestQuality`:
rejected rows are not stored, flagged ones are stored and reported) and each
symbol's bars are written together with its checkpoint, all in one transaction,
so after a crash a checkpoint never runs ahead of the stored bars (should that
transaction fail, each symbol is written in its own, so that one symbol's failure
spares the others). With ``resume`` a symbol whose checkpoint lies inside the
range continues right after it; the writes are idempotent, so a resumed job ends
with exactly the rows of an uninterrupted one. ``refresh`` replaces stored bars
whose values differ. When a symbol's fetch has ended, its quality score is computed
and, with ``rollup_after_ingest``, the buckets of the coarser timeframes that hold
new bars are recomputed (for every symbol ending at the same time at once); the
job's quality report is stored in ``quality_reports``.

One failing symbol does not stop the others: its error is recorded, what it
fetched before the failure is kept, and the job ends ``partial``. The ``jobs``
table holds per-symbol counts (fetched, inserted, duplicate, conflicting,
replaced, dropped, rejected, flagged), errors and durations, saved as symbols
finish (at most every ``SUMMARY_EVERY_S`` seconds) and at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from marketlake.errors import InputError, MarketLakeError
from marketlake.ingest.horizon import clamp_to_now
from marketlake.ingest.rollups import SourceClash, rollup_spans
from marketlake.providers.base import Provider
from marketlake.quality.checks import IngestQuality, series_spans
from marketlake.quality.policy import QualityPolicy, QualityReport
from marketlake.schema import (
    BAR_SCHEMA,
    Instrument,
    Timeframe,
    default_instrument,
    normalize_symbol,
)
from marketlake.store.base import OnConflict, Store, WriteResult, check_range

ProgressCallback = Callable[[str, int, float], None]
"""Called as ``(symbol, rows_in_batch, fraction_of_range_done)`` after each page."""

DEFAULT_CONCURRENCY = 4
DEFAULT_BATCH_ROWS = 100_000
SUMMARY_EVERY_S = 2.0
"""How often a running job's per-symbol summary is saved (each save is a commit)."""


@dataclass(slots=True)
class SymbolResult:
    """What one symbol of a job did."""

    symbol: str
    fetched: int = 0
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    replaced: int = 0
    dropped: int = 0
    actions: int = 0
    rejected: int = 0
    flagged: int = 0
    score: float | None = None
    rolled_up: int = 0
    notes: list[str] = field(default_factory=list)  # e.g. stored bars a roll-up kept
    resumed_from: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def add(self, written: WriteResult, rows: int) -> None:
        self.fetched += rows
        self.inserted += written.inserted
        self.duplicates += written.duplicates
        self.conflicts += written.conflicts
        self.replaced += written.replaced


@dataclass(slots=True)
class IngestResult:
    """The outcome of a job: per-symbol results and the job id."""

    job_id: str
    symbols: list[SymbolResult] = field(default_factory=list)
    seconds: float = 0.0
    quality_report: str | None = None

    @property
    def status(self) -> str:
        failed = sum(not s.ok for s in self.symbols)
        if failed == 0:
            return "succeeded"
        return "failed" if failed == len(self.symbols) else "partial"

    @property
    def rows(self) -> int:
        return sum(s.fetched for s in self.symbols)

    def summary(self) -> dict[str, Any]:
        return {
            "symbols": [asdict(s) for s in self.symbols],
            "seconds": round(self.seconds, 3),
            "quality_report": self.quality_report,
        }


@dataclass(slots=True)
class _Handover:
    """Bars of one symbol that a fetch hands to the writer; ``last`` ends the symbol's fetch
    and carries what the provider learnt besides bars (after a successful fetch)."""

    result: SymbolResult
    tables: list[pa.Table]
    rows: int
    last: bool = False
    learnt: tuple[pa.Table, Instrument | None] | None = None


@dataclass(slots=True)
class _Outcome:
    """What writing one symbol's handed-over bars did, applied to its result after commit."""

    item: _Handover
    written: WriteResult
    rows: int
    rejected: int
    flagged: int
    bounds: tuple[datetime, datetime] | None
    actions: int


@dataclass(slots=True)
class _Job:
    """Everything the symbols of one job share. Its store work runs in the writer's thread."""

    store: Store
    provider: Provider
    tf: Timeframe
    start: datetime
    end: datetime
    id: str
    resume: bool
    on_conflict: OnConflict
    batch_rows: int
    progress: ProgressCallback | None
    quality: IngestQuality
    rollups: Sequence[str]
    written: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    """Per symbol: the first and last bar time this job inserted or replaced."""
    instruments: dict[str, Instrument] = field(default_factory=dict)
    """The instruments of the job's symbols, read once, kept up to date as it refines them."""
    auto: set[str] = field(default_factory=set)
    """The symbols registered with defaults, which the provider's details may refine."""
    committed: dict[str, int] = field(default_factory=dict)
    """Per symbol: the bars inserted or replaced by the transactions committed so far;
    recorded in the job's summary with each of them, so that a killed job shows it."""
    failed_writes: set[str] = field(default_factory=set)
    """Symbols whose bars could not be written: later batches of theirs are not written,
    so their checkpoint never passes the bars that are missing."""

    def store_batches(self, items: list[_Handover]) -> list[SymbolResult]:
        """Write the bars handed over by several symbols in one transaction (each symbol in
        its own when that fails, so that one symbol's failure spares the others). Returns
        the results of the symbols whose fetch ended, for :meth:`finish`."""
        todo = [
            i for i in items if (i.tables or i.learnt) and i.result.symbol not in self.failed_writes
        ]
        outcomes: list[_Outcome] = []
        try:
            outcomes, found = self._write_atomically(todo)
            self.quality.record(found)
        except MarketLakeError:
            outcomes = []
            for item in todo:
                if item.result.symbol in self.failed_writes:
                    continue
                try:
                    done, found = self._write_atomically([item])
                except MarketLakeError as exc:
                    self._write_failed(item.result, exc)
                    continue
                self.quality.record(found)
                outcomes += done
        for outcome in outcomes:
            self._apply(outcome)
        return [i.result for i in items if i.last]

    def finish(self, ended: list[SymbolResult]) -> list[SymbolResult]:
        """Roll up and score the symbols whose fetch ended and whose bars are written."""
        self._finish([r for r in ended if r.ok])
        return ended

    def _write_atomically(self, items: list[_Handover]) -> tuple[list[_Outcome], QualityReport]:
        """:meth:`_write` in one transaction, run again from the same state when the
        store retries it after a dropped connection."""
        instruments, auto, committed = dict(self.instruments), set(self.auto), self.committed

        def attempt() -> tuple[list[_Outcome], QualityReport]:
            self.instruments, self.auto = dict(instruments), set(auto)
            outcomes, found = self._write(items)
            counts = dict(committed)
            for outcome in outcomes:
                symbol = outcome.item.result.symbol
                counts[symbol] = (
                    counts.get(symbol, 0) + outcome.written.inserted + outcome.written.replaced
                )
            self.store.update_job(self.id, summary=self.committed_summary(counts))
            self.committed = counts
            return outcomes, found

        return self.store.atomically(attempt, "writing the bars of a batch")

    def committed_summary(self, committed: dict[str, int] | None = None) -> dict[str, Any]:
        """The summary of a running job: the bars its committed transactions wrote."""
        counts = self.committed if committed is None else committed
        return {"rows_committed": sum(counts.values()), "committed": dict(sorted(counts.items()))}

    def _write(self, items: list[_Handover]) -> tuple[list[_Outcome], QualityReport]:
        """Apply the quality rules to the bars of ``items`` (all symbols at once), then
        write each symbol's kept bars, checkpoint and learnt details (in the caller's
        transaction)."""
        by_symbol: dict[str, list[_Handover]] = {}
        for item in items:
            by_symbol.setdefault(item.result.symbol, []).append(item)
        tables = [t for group in by_symbol.values() for i in group for t in i.tables]
        found = QualityReport()
        kept = BAR_SCHEMA.empty_table()
        if tables:
            kept, found = self.quality.inspect(
                pa.concat_tables(tables).combine_chunks(), self._instruments(list(by_symbol))
            )
        series = {s.symbol: s for s in found.series}
        written = self.store.write_bars_per_series(kept, on_conflict=self.on_conflict)
        tf = str(self.tf)
        self.store.set_checkpoints(
            self.provider.name,
            tf,
            {
                symbol: max(
                    pc.max(t.column("ts")).as_py() for i in group for t in i.tables if t.num_rows
                )
                for symbol, group in by_symbol.items()
                if any(i.rows for i in group)
            },
            self.id,
        )
        spans = series_spans(kept)
        outcomes = []
        for symbol, group in by_symbol.items():
            mine = written.get((symbol, tf), WriteResult())
            bounds = spans.get(symbol) if mine.inserted or mine.replaced else None
            learnt = [i.learnt for i in group if i.learnt is not None]
            actions = self._learnt(symbol, *learnt[-1]) if learnt else 0
            stats = series.get(symbol)
            outcomes.append(
                _Outcome(
                    group[-1],
                    mine,
                    sum(i.rows for i in group),
                    stats.rejected if stats else 0,
                    stats.flagged if stats else 0,
                    bounds,
                    actions,
                )
            )
        return outcomes, found

    def _apply(self, outcome: _Outcome) -> None:
        result = outcome.item.result
        result.add(outcome.written, outcome.rows)
        result.rejected += outcome.rejected
        result.flagged += outcome.flagged
        result.actions += outcome.actions
        if outcome.bounds is not None:
            lo, hi = self.written.get(result.symbol, outcome.bounds)
            self.written[result.symbol] = (min(lo, outcome.bounds[0]), max(hi, outcome.bounds[1]))

    def _write_failed(self, result: SymbolResult, exc: MarketLakeError) -> None:
        self.failed_writes.add(result.symbol)
        result.error = (
            exc.message
            if result.error is None
            else f"{result.error}; and the bars before it: {exc.message}"
        )

    def _learnt(self, symbol: str, actions: pa.Table, info: Instrument | None) -> int:
        """Store actions and refine an auto-registered instrument."""
        if not actions.num_rows and info is None:
            return 0
        new = self.store.write_actions(actions, replace=self.on_conflict == "replace")
        if info is not None and symbol in self.auto:
            self.instruments[symbol] = self.store.update_instrument(info)
            self.auto.discard(symbol)
        return new

    def _instruments(self, symbols: Sequence[str]) -> dict[str, Instrument]:
        return {
            symbol: self.instruments.get(symbol) or default_instrument(symbol) for symbol in symbols
        }

    def _finish(self, results: list[SymbolResult]) -> None:
        """The roll-ups of what the symbols wrote (all at once), then their quality scores."""
        spans = {}
        for result in results:
            span = self.written.get(result.symbol)
            if self.resume and self.store.get_checkpoint(
                self.provider.name, result.symbol, str(self.tf)
            ):
                # an interrupted run may have written bars without rolling them up
                span = (self.start, self.end - timedelta(microseconds=1))
            if span is not None:
                spans[result.symbol] = span
        if self.rollups and spans:
            self._rollup(results, spans)
        ok = self._instruments([r.symbol for r in results if r.ok])
        try:
            scans = self.quality.scans(ok)
        except MarketLakeError:
            scans = {}  # symbol by symbol below, to tell which one fails
        for result in results:
            if result.ok:
                try:
                    result.score = self.quality.finish(
                        result.symbol, ok[result.symbol], scans.get(result.symbol)
                    ).score
                except MarketLakeError as exc:
                    result.error = exc.message

    def _rollup(
        self, results: list[SymbolResult], spans: dict[str, tuple[datetime, datetime]]
    ) -> None:
        by_symbol = {r.symbol: r for r in results}
        replace = self.provider.settings.rollup_replace_sources
        clashes: list[SourceClash] = []

        def roll(which: dict[str, tuple[datetime, datetime]]) -> dict[str, int]:
            found: list[SourceClash] = []  # afresh on every try of a retried transaction
            counts = rollup_spans(
                self.store,
                which,
                self.tf,
                self.rollups,
                instruments=self._instruments(list(which)),
                replace_sources=replace,
                clashes=found,
            )
            clashes.extend(found)
            return counts

        try:
            rolled = self.store.atomically(lambda: roll(spans), "rolling up the bars")
        except MarketLakeError:  # one symbol at a time, to tell which one fails
            clashes.clear()
            rolled = {}
            for symbol, span in spans.items():
                try:
                    rolled |= self.store.atomically(
                        lambda s=symbol, sp=span: roll({s: sp}),  # type: ignore[misc]
                        "rolling up the bars",
                    )
                except MarketLakeError as exc:
                    by_symbol[symbol].error = exc.message
        for symbol, bars in rolled.items():
            by_symbol[symbol].rolled_up = bars
        for clash in clashes:
            by_symbol[clash.symbol].notes.append(str(clash))

    def resume_point(self, symbol: str) -> datetime | None:
        """The checkpoint to continue after, when resuming and it lies inside the range."""
        last = self.store.get_checkpoint(self.provider.name, symbol, str(self.tf))
        if last is not None and self.start <= last < self.end:
            return last
        return None

    def report(self, symbol: str, rows: int, last: Any) -> None:
        if self.progress is not None:
            span = (self.end - self.start).total_seconds() or 1.0
            done = (last - self.start).total_seconds() / span if last is not None else 1.0
            self.progress(symbol, rows, min(1.0, max(0.0, done)))


class _Writer:
    """The one task that writes. Fetches hand it every page and go on fetching; it writes
    once ``batch_rows`` bars (of all symbols) are waiting or a symbol's fetch has ended,
    taking everything handed over meanwhile, so that several symbols share one
    transaction, and runs the store work in a thread, off the event loop. While it
    writes, fetches go on until another ``batch_rows`` bars wait. Symbols whose fetch
    ended are finished (rolled up, scored) together once nothing else waits to be
    written: a roll-up costs about the same for one symbol as for many."""

    def __init__(self, job: _Job, batch_rows: int, ended: Callable[[SymbolResult], None]) -> None:
        self.job = job
        self.batch_rows = batch_rows
        self.ended = ended
        self.waiting: list[_Handover] = []
        self.rows = 0
        self.ends = 0
        self.changed = asyncio.Condition()

    async def put(self, item: _Handover) -> None:
        async with self.changed:
            self.waiting.append(item)
            self.rows += item.rows
            self.ends += item.last
            self.changed.notify_all()
            await self.changed.wait_for(lambda: self.rows < self.batch_rows)

    def _ready(self) -> bool:
        return self.rows >= self.batch_rows or self.ends > 0

    async def run(self, symbols: int) -> None:
        """Write until ``symbols`` fetches have ended and their symbols are finished."""
        written: list[SymbolResult] = []  # ended and written, not finished yet
        while symbols:
            async with self.changed:
                if not written:
                    await self.changed.wait_for(self._ready)
                items: list[_Handover] = []
                if self._ready():
                    items, self.waiting, self.rows, self.ends = self.waiting, [], 0, 0
                    self.changed.notify_all()
            if items:
                written += await asyncio.to_thread(self.job.store_batches, items)
                continue
            for result in await asyncio.to_thread(self.job.finish, written):
                symbols -= 1
                self.ended(result)
            written = []


async def _fetch_symbol(job: _Job, writer: _Writer, result: SymbolResult) -> None:
    """Fetch one symbol's bars, handing every page to the writer."""
    symbol, start = result.symbol, job.start
    resumed = await asyncio.to_thread(job.resume_point, symbol) if job.resume else None
    if resumed is not None:
        result.resumed_from = resumed.isoformat()
        start = resumed + timedelta(microseconds=1)
    learnt = None
    try:
        async with contextlib.aclosing(
            job.provider.fetch_bars(symbol, job.tf, start, job.end)
        ) as tables:
            async for table in tables:  # closed at once on a break: no request goes on
                job.report(symbol, table.num_rows, table.column("ts")[-1].as_py())
                await writer.put(_Handover(result, [table], table.num_rows))
                if symbol in job.failed_writes:
                    break
        learnt = (job.provider.corporate_actions(symbol), await job.provider.describe(symbol))
    except MarketLakeError as exc:  # what arrived before the failure is kept: --resume
        result.error = exc.message  # starts after it
    await writer.put(_Handover(result, [], 0, last=True, learnt=learnt))


async def run_ingest(
    store: Store,
    provider: Provider,
    symbols: Sequence[str],
    timeframe: str | Timeframe,
    start: datetime,
    end: datetime,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    resume: bool = False,
    refresh: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: ProgressCallback | None = None,
    job_id: str | None = None,
    policy: QualityPolicy | None = None,
    rollup: bool | None = None,
) -> IngestResult:
    """Fetch ``symbols`` from ``provider`` over ``[start, end)`` and write them idempotently.

    The run is recorded as a new job, or into ``job_id`` when the caller created
    the job already (the API does, to answer with its id before the run starts).
    ``policy`` defaults to the provider's settings (and ``config/quality.yml``);
    ``rollup`` to ``settings.rollup_after_ingest``.
    """
    check_range(start, end)
    tf = provider.check_request(timeframe, start, end)
    end = clamp_to_now(start, end, tf)
    if concurrency < 1:
        raise InputError(f"--concurrency {concurrency} must be at least 1", param="concurrency")
    names = list(dict.fromkeys(normalize_symbol(s) for s in symbols))
    with store.transaction():
        store.ensure_instruments(names)
    params = {
        "provider": provider.name,
        "symbols": names,
        "timeframe": str(tf),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "resume": resume,
        "refresh": refresh,
        "concurrency": concurrency,
    }
    if resume:
        store.reap_jobs()  # the runs this one resumes, if killed, read as interrupted
    if job_id is None:
        job_id = store.create_job("ingest", params).id
    store.update_job(job_id, status="running")
    settings = provider.settings
    quality = IngestQuality(store, policy or QualityPolicy.from_settings(settings), tf, start, end)
    do_rollup = settings.rollup_after_ingest if rollup is None else rollup
    job = _Job(
        store,
        provider,
        tf,
        start,
        end,
        job_id,
        resume,
        "replace" if refresh else "ignore",
        batch_rows,
        progress,
        quality,
        settings.rollup_timeframes if do_rollup else [],
    )
    results = {name: SymbolResult(name) for name in names}
    job.instruments = {i.symbol: i for i in store.list_instruments() if i.symbol in results}
    job.auto = store.auto_registered() & set(names)
    began = time.perf_counter()
    result = IngestResult(job_id)
    slots = asyncio.Semaphore(concurrency)
    starts: dict[str, float] = {}
    done: list[str] = []
    saved = [time.perf_counter()]

    def ended(symbol: SymbolResult) -> None:
        symbol.dropped = provider.dropped.get(symbol.symbol, 0)
        symbol.seconds = time.perf_counter() - starts[symbol.symbol]
        job.report(symbol.symbol, 0, None)
        done.append(symbol.symbol)
        if time.perf_counter() - saved[0] >= SUMMARY_EVERY_S and len(done) < len(names):
            saved[0] = time.perf_counter()
            result.symbols = [results[s] for s in names if s in done]
            store.update_job(job_id, summary={**result.summary(), **job.committed_summary()})

    writer = _Writer(job, batch_rows, ended)

    async def one(symbol: str) -> None:
        async with slots:
            starts[symbol] = time.perf_counter()
            await _fetch_symbol(job, writer, results[symbol])

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(writer.run(len(names)))
            for symbol in names:
                group.create_task(one(symbol))
    except asyncio.CancelledError:
        store.update_job(job_id, status="cancelled", error="the job was interrupted")
        raise
    except BaseExceptionGroup as group:  # a symbol's task crashed: raise what crashed it
        store.update_job(job_id, status="failed", error="the job stopped unexpectedly")
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    except BaseException:
        store.update_job(job_id, status="failed", error="the job stopped unexpectedly")
        raise
    result.symbols = [results[s] for s in names]
    result.quality_report = quality.save(job_id, names, provider=provider.name)
    result.seconds = time.perf_counter() - began
    errors = "; ".join(f"{s.symbol}: {s.error}" for s in result.symbols if s.error)
    store.update_job(job_id, status=result.status, summary=result.summary(), error=errors or None)
    return result
