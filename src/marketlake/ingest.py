"""Ingest jobs: fetch from a provider → validate → idempotent write → roll up, as a job.

A job fetches its symbols concurrently (``concurrency`` at a time, default 4).
Each symbol's pages are buffered into batches of about ``batch_rows`` bars; a
batch passes the quality rules (:class:`marketlake.checks.IngestQuality`:
rejected rows are not stored, flagged ones are stored and reported) and is
written together with the symbol's checkpoint in one transaction, so after a
crash the checkpoint never runs ahead of the stored bars. With ``resume`` a
symbol whose checkpoint lies inside the range continues right after it; the
writes are idempotent, so a resumed job ends with exactly the rows of an
uninterrupted one. ``refresh`` replaces stored bars whose values differ. After
a symbol, its quality score is computed and, with ``rollup_after_ingest``, the
buckets of the coarser timeframes that hold new bars are recomputed; the job's
quality report is stored in ``quality_reports``.

One failing symbol does not stop the others: its error is recorded, what it
fetched before the failure is kept, and the job ends ``partial``. The ``jobs``
table holds per-symbol counts (fetched, inserted, duplicate, conflicting,
replaced, dropped, rejected, flagged), errors and durations, saved as symbols
finish (at most every ``SUMMARY_EVERY_S`` seconds) and at the end.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from marketlake.adjust import write_actions
from marketlake.aggregate import rollup_after_ingest
from marketlake.checks import IngestQuality, first_last
from marketlake.errors import InputError, MarketLakeError
from marketlake.providers.base import Provider
from marketlake.quality import QualityPolicy
from marketlake.schema import Instrument, Timeframe, normalize_symbol
from marketlake.store.base import OnConflict, Store, WriteResult, check_range

ProgressCallback = Callable[[str, int, float], None]
"""Called as ``(symbol, rows_in_batch, fraction_of_range_done)`` after each page."""

DEFAULT_CONCURRENCY = 4
DEFAULT_BATCH_ROWS = 50_000
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
        return {"symbols": [asdict(s) for s in self.symbols], "seconds": round(self.seconds, 3),
                "quality_report": self.quality_report}


@dataclass(slots=True)
class _Job:
    """Everything the symbols of one job share."""

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
    _checking: threading.Lock = field(default_factory=threading.Lock)

    def write(self, symbol: str, tables: list[pa.Table], result: SymbolResult) -> WriteResult:
        """Apply the quality rules to a batch, then write what they keep and the symbol's
        checkpoint in one transaction."""
        batch = pa.concat_tables(tables)
        with self._checking:  # symbols run in threads; the report is shared
            kept, found = self.quality.check(batch)
        result.rejected += found.rejected
        result.flagged += sum(s.flagged for s in found.series)
        last = pc.max(batch.column("ts")).as_py()
        with self.store.transaction():
            written = self.store.write_bars(kept, on_conflict=self.on_conflict)
            self.store.set_checkpoint(self.provider.name, symbol, str(self.tf), last, self.id)
        bounds = first_last(kept) if written.inserted or written.replaced else None
        if bounds is not None:
            lo, hi = self.written.get(symbol, bounds)
            self.written[symbol] = (min(lo, bounds[0]), max(hi, bounds[1]))
        return written

    def finish(self, symbol: str, result: SymbolResult) -> None:
        """The symbol's quality score, then the roll-ups of what it wrote."""
        with self._checking:
            result.score = self.quality.finish(symbol).score
        span = self.written.get(symbol)
        if self.resume and self.store.get_checkpoint(self.provider.name, symbol, str(self.tf)):
            # an interrupted run may have written bars without rolling them up
            span = (self.start, self.end - timedelta(microseconds=1))
        if self.rollups and span is not None:
            rolled = rollup_after_ingest(self.store, symbol, self.tf, span[0], span[1],
                                         self.rollups)
            result.rolled_up = sum(r.bars for r in rolled)

    def learnt(self, symbol: str, actions: pa.Table, info: Instrument | None) -> int:
        """Store actions and refine an auto-registered instrument, in one transaction."""
        if not actions.num_rows and info is None:
            return 0
        with self.store.transaction():
            new = write_actions(self.store, actions, replace=self.on_conflict == "replace")
            if info is not None and self.store.is_auto_registered(symbol):
                self.store.update_instrument(info)
        return new

    def resume_point(self, symbol: str) -> datetime | None:
        """The checkpoint to continue after, when resuming and it lies inside the range."""
        if not self.resume:
            return None
        last = self.store.get_checkpoint(self.provider.name, symbol, str(self.tf))
        if last is not None and self.start <= last < self.end:
            return last
        return None

    def report(self, symbol: str, rows: int, last: Any) -> None:
        if self.progress is not None:
            span = (self.end - self.start).total_seconds() or 1.0
            done = (last - self.start).total_seconds() / span if last is not None else 1.0
            self.progress(symbol, rows, min(1.0, max(0.0, done)))


async def _fetch_symbol(job: _Job, symbol: str) -> SymbolResult:
    result = SymbolResult(symbol)
    began = time.perf_counter()
    start = job.start
    resumed = await asyncio.to_thread(job.resume_point, symbol)
    if resumed is not None:
        result.resumed_from = resumed.isoformat()
        start = resumed + timedelta(microseconds=1)
    buffer: list[pa.Table] = []
    try:
        async for table in job.provider.fetch_bars(symbol, job.tf, start, job.end):
            buffer.append(table)
            job.report(symbol, table.num_rows, table.column("ts")[-1].as_py())
            if sum(t.num_rows for t in buffer) >= job.batch_rows:
                await _flush(job, symbol, buffer, result)
        await _flush(job, symbol, buffer, result)
        await _after_fetch(job, symbol, result)
        await asyncio.to_thread(job.finish, symbol, result)
    except MarketLakeError as exc:
        result.error = exc.message
        try:  # keep what arrived before the failure, so --resume starts after it
            await _flush(job, symbol, buffer, result)
        except MarketLakeError as also:
            result.error = f"{exc.message}; and the bars before it: {also.message}"
    result.dropped = job.provider.dropped.get(symbol, 0)
    result.seconds = time.perf_counter() - began
    job.report(symbol, 0, None)
    return result


async def _flush(job: _Job, symbol: str, buffer: list[pa.Table], result: SymbolResult) -> None:
    if not buffer:
        return
    rows = sum(t.num_rows for t in buffer)
    tables = list(buffer)
    buffer.clear()
    written = await asyncio.to_thread(job.write, symbol, tables, result)
    result.add(written, rows)


async def _after_fetch(job: _Job, symbol: str, result: SymbolResult) -> None:
    """Store what the provider learnt besides bars: corporate actions, instrument details."""
    actions = job.provider.corporate_actions(symbol)
    info = await job.provider.describe(symbol)
    result.actions = await asyncio.to_thread(job.learnt, symbol, actions, info)


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
    if concurrency < 1:
        raise InputError(f"--concurrency {concurrency} must be at least 1", param="concurrency")
    names = list(dict.fromkeys(normalize_symbol(s) for s in symbols))
    with store.transaction():
        store.ensure_instruments(names)
    params = {"provider": provider.name, "symbols": names, "timeframe": str(tf),
              "start": start.isoformat(), "end": end.isoformat(), "resume": resume,
              "refresh": refresh, "concurrency": concurrency}
    if job_id is None:
        job_id = store.create_job("ingest", params).id
    store.update_job(job_id, status="running")
    settings = provider.settings
    quality = IngestQuality(store, policy or QualityPolicy.from_settings(settings), tf, start, end)
    do_rollup = settings.rollup_after_ingest if rollup is None else rollup
    job = _Job(store, provider, tf, start, end, job_id, resume,
               "replace" if refresh else "ignore", batch_rows, progress, quality,
               settings.rollup_timeframes if do_rollup else [])
    began = time.perf_counter()
    result = IngestResult(job_id)
    slots = asyncio.Semaphore(concurrency)
    done: dict[str, SymbolResult] = {}

    saved = [time.perf_counter()]

    async def one(symbol: str) -> None:
        async with slots:
            done[symbol] = await _fetch_symbol(job, symbol)
        if time.perf_counter() - saved[0] >= SUMMARY_EVERY_S and len(done) < len(names):
            saved[0] = time.perf_counter()
            result.symbols = [done[s] for s in names if s in done]
            await asyncio.to_thread(store.update_job, job_id, summary=result.summary())

    try:
        async with asyncio.TaskGroup() as group:
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
    result.symbols = [done[s] for s in names]
    result.quality_report = quality.save(job_id, names, provider=provider.name)
    result.seconds = time.perf_counter() - began
    errors = "; ".join(f"{s.symbol}: {s.error}" for s in result.symbols if s.error)
    store.update_job(job_id, status=result.status, summary=result.summary(),
                     error=errors or None)
    return result
