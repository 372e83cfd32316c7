"""CSV import jobs: read → check → idempotent write.

With ``on_error="fail"`` the first bad line aborts the import and no bar and no
instrument is written (the job list records the failed attempt): files up to
:data:`ONE_TRANSACTION_BYTES` are written in one transaction that is rolled
back, larger ones are checked whole before the first write, so memory stays
bounded. With ``"skip"`` bad lines are left out and listed in the result, and
good blocks are committed as they come. Besides the per-row rules of
:mod:`marketlake.providers.csv.rows`, a time that appears twice in the file
with other values is a bad line (the later one); with the same values it is a
harmless duplicate. Parsing runs one block ahead of writing, on a second thread.

The parsed bars then pass the quality policy, as in an ingest job
(:class:`marketlake.quality.checks.IngestQuality`): bars a ``reject`` rule catches are not
stored, whatever ``on_error`` says; ``flag`` findings are stored. The import's
quality report (kind ``import``, tied to its job, gaps checked over the file's
range) is saved when the import succeeds; its findings name the file line.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa

from marketlake.errors import InputError, MarketLakeError
from marketlake.providers.csv.reader import BLOCK_BYTES, CsvBarReader, first_problem
from marketlake.providers.csv.rows import BadRow
from marketlake.quality.checks import IngestQuality
from marketlake.quality.policy import QualityPolicy, QualityReport
from marketlake.schema import BAR_VALUES, Timeframe, from_epoch_us
from marketlake.store.base import OnConflict, Store, WriteResult, check_on_conflict
from marketlake.store.merge import find_repeats, ts_micros

OnError = Literal["fail", "skip"]
ImportProgress = Callable[[int, int, int], None]
"""Called as ``(bytes_read, file_bytes, rows_read)`` after each block."""

T = TypeVar("T")
ONE_TRANSACTION_BYTES = 256 << 20
"""With ``on_error="fail"``, files up to this size are written in one transaction; larger
files are checked whole first and then written block by block, because an open DuckDB
transaction holds its rows in memory (about 100 bytes a bar)."""
_PRIME = np.uint64(0x9E3779B97F4A7C15)


@dataclass(slots=True)
class ImportResult:
    """What an import did; ``skipped`` lists every line left out and why."""

    job_id: str
    path: str
    symbol: str
    timeframe: str = ""
    rows: int = 0
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    replaced: int = 0
    rejected: int = 0  # bars a reject rule of the quality policy kept out
    flagged: int = 0  # bars stored with a finding of a flag rule
    quality_report: str | None = None
    score: float | None = None
    skipped: list[BadRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    in_parts: bool = False
    """Written in several transactions (a file above the one-transaction limit)."""
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return "partial" if self.skipped else "succeeded"

    def add(self, written: WriteResult) -> None:
        self.inserted += written.inserted
        self.duplicates += written.duplicates
        self.conflicts += written.conflicts
        self.replaced += written.replaced

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [asdict(bad) for bad in self.skipped]
        data["seconds"] = round(self.seconds, 3)
        data["status"] = self.status
        return data


def import_csv(
    store: Store,
    path: str | Path,
    symbol: str,
    *,
    timeframe: str | Timeframe | None = None,
    tz: str | None = None,
    on_error: OnError = "fail",
    on_conflict: OnConflict = "ignore",
    delimiter: str = ",",
    source: str = "csv",
    progress: ImportProgress | None = None,
    policy: QualityPolicy | None = None,
    block_bytes: int = BLOCK_BYTES,
    one_transaction_bytes: int = ONE_TRANSACTION_BYTES,
    date_format: str | None = None,
    decimal: str = ".",
) -> ImportResult:
    """Import one CSV file of bars for ``symbol``; see the module docstring.

    ``policy`` is the quality policy (default: the built-in one; the CLI reads the
    settings and ``config/quality.yml``).
    """
    if on_error not in ("fail", "skip"):
        raise InputError(f"--on-error {on_error!r} must be fail or skip", param="on_error")
    check_on_conflict(on_conflict)
    tf = Timeframe.parse(timeframe) if timeframe else None
    # a file written in parts is written in at least 16 of them
    block_bytes = min(block_bytes, max(64 << 10, one_transaction_bytes // 16))
    reader = CsvBarReader(
        Path(path), symbol, tf, tz, delimiter, source, block_bytes, date_format, decimal
    )
    job = store.create_job(
        "import",
        {
            "path": str(path),
            "symbol": reader.symbol,
            "timeframe": str(tf or ""),
            "tz": tz,
            "on_error": on_error,
        },
    )
    store.update_job(job.id, status="running")
    result = ImportResult(job.id, str(path), reader.symbol)
    run = _Run(store, reader, result, on_error, on_conflict, progress, policy or QualityPolicy())
    began = time.perf_counter()
    try:
        if on_error == "skip":
            run.write()
        elif reader.size <= one_transaction_bytes:
            with store.transaction():
                run.write()
        else:
            run.check()
            result.notes.append(
                f"the file is larger than the one-transaction limit "
                f"({one_transaction_bytes / 2**20:g} MiB, MARKETLAKE_IMPORT_ONE_TRANSACTION_MIB): "
                "it was checked completely, then written in parts, each in its own "
                "transaction; an interrupted import keeps the parts it wrote, and running "
                "the same import again completes it (it inserts only what is missing)"
            )
            result.in_parts = True
            run.write()
    except MarketLakeError as exc:
        result.seconds = time.perf_counter() - began
        store.update_job(job.id, status="failed", summary=result.summary(), error=exc.message)
        raise
    run.save_quality(job.id)
    result.seconds = time.perf_counter() - began
    result.timeframe = str(reader.timeframe or "")
    result.notes = [*result.notes, *reader.notes]
    if reader.checks is not None and reader.checks.relabelled:
        result.notes.append(
            f"{reader.checks.relabelled} times relabelled to the start of their "
            f"{reader.timeframe} bar (the trading date at 00:00 UTC)"
        )
    store.update_job(job.id, status=result.status, summary=result.summary())
    return result


@dataclass
class _Run:
    """One import: a checking pass (for big files with on_error="fail") and a writing pass."""

    store: Store
    reader: CsvBarReader
    result: ImportResult
    on_error: OnError
    on_conflict: OnConflict
    progress: ImportProgress | None
    policy: QualityPolicy
    passes: int = 1
    quality: IngestQuality | None = None

    def check(self) -> None:
        """Read the whole file and raise on the first bad line, writing nothing."""
        self.passes = 2
        seen = SeenTimes(self.reader.time_label)
        rows = 0
        for batch in prefetch(self.reader.batches()):
            rows += batch.rows
            _, _, repeated, _ = seen.check(batch.bars, batch.lines)
            self._fail_on([*batch.bad, *repeated])
            self._report(batch.bytes_read, rows)
        if rows == 0:
            raise InputError(f"{self.reader.path} has a header but no data rows")

    def write(self) -> None:
        """Read, check and write block by block (in the caller's transaction, if any)."""
        seen = SeenTimes(self.reader.time_label)
        result = self.result
        registered = False
        for batch in prefetch(self.reader.batches()):
            result.rows += batch.rows
            bars, lines, repeated, duplicates = seen.check(batch.bars, batch.lines)
            bad = self._fail_on([*batch.bad, *repeated])
            result.skipped += bad
            result.duplicates += duplicates
            if bars.num_rows:
                if not registered:
                    self.store.ensure_instruments([result.symbol])
                    registered = True
                bars = self._apply_policy(bars, lines)
            if bars.num_rows:
                result.add(self.store.write_bars(bars, on_conflict=self.on_conflict))
            offset = self.reader.size if self.passes == 2 else 0
            self._report(offset + batch.bytes_read, result.rows)
        if result.rows == 0:
            raise InputError(f"{self.reader.path} has a header but no data rows")

    def _apply_policy(self, bars: pa.Table, lines: np.ndarray[Any, Any]) -> pa.Table:
        """The bars the quality policy keeps; its findings name their file line."""
        if self.quality is None:
            assert self.reader.timeframe is not None  # known once the first block is read
            self.quality = IngestQuality(
                self.store, self.policy, self.reader.timeframe, None, None, kind="import"
            )
        kept, found = self.quality.check(bars)
        for finding in found.findings:
            if finding.row is not None:
                finding.values["line"] = int(lines[finding.row])
        self.result.rejected += found.rejected
        self.result.flagged += sum(s.flagged for s in found.series)
        return kept

    def save_quality(self, job_id: str) -> QualityReport | None:
        """Check the imported range for gaps, score it and store the import's report."""
        if self.quality is None:
            return None
        self.result.score = self.quality.finish(self.result.symbol).score
        self.result.quality_report = self.quality.save(
            job_id, [self.result.symbol], path=str(self.reader.path)
        )
        return self.quality.report

    def _fail_on(self, bad: list[BadRow]) -> list[BadRow]:
        bad.sort(key=lambda b: b.line)
        if bad and self.on_error == "fail":
            raise first_problem(bad, "fix the file or pass --on-error skip")
        return bad

    def _report(self, done: int, rows: int) -> None:
        if self.progress is not None:
            self.progress(done, self.reader.size * self.passes, rows)


def _row_hash(bars: pa.Table) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """A 64-bit digest of each row's values, to compare rows of different blocks."""
    digest = np.zeros(bars.num_rows, dtype=np.uint64)
    for name in BAR_VALUES:
        column = bars.column(name)
        if pa.types.is_floating(column.type):
            bits = np.asarray(column.to_numpy()).view(np.uint64)
        else:
            bits = np.asarray(column.fill_null(-1).to_numpy()).view(np.uint64)
        digest = (digest ^ bits) * _PRIME
        digest ^= digest >> np.uint64(29)
    return digest


@dataclass
class SeenTimes:
    """The times (with line and value digest) of every row accepted so far."""

    label: str
    chunks: list[
        tuple[int, int, np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]
    ] = field(default_factory=list)

    def check(
        self, bars: pa.Table, lines: np.ndarray[Any, Any]
    ) -> tuple[pa.Table, np.ndarray[Any, Any], list[BadRow], int]:
        """Drop rows repeating an earlier time; other values make them bad rows."""
        ts = ts_micros(bars)
        repeats = find_repeats(ts, bars)
        bad = [
            self._bad(int(lines[r]), int(ts[r]), int(lines[f]))
            for r, f, same in zip(repeats.repeat, repeats.first, repeats.same, strict=True)
            if not same
        ]
        duplicates = repeats.duplicates
        if not repeats.identity:
            bars, ts, lines = (
                bars.take(pa.array(repeats.keep)),
                ts[repeats.keep],
                lines[repeats.keep],
            )
        digest = _row_hash(bars)
        drop = np.zeros(len(ts), dtype=bool)
        for lo, hi, old_ts, old_lines, old_digest in self.chunks if len(ts) else []:
            if ts[-1] < lo or ts[0] > hi:
                continue
            pos = np.minimum(np.searchsorted(old_ts, ts), len(old_ts) - 1)
            hit = (old_ts[pos] == ts) & ~drop
            same = hit & (old_digest[pos] == digest)
            duplicates += int(same.sum())
            bad += [
                self._bad(int(lines[i]), int(ts[i]), int(old_lines[pos[i]]))
                for i in np.flatnonzero(hit & ~same)
            ]
            drop |= hit
        if drop.any():
            keep = pa.array(np.flatnonzero(~drop))
            bars, ts, lines, digest = bars.take(keep), ts[~drop], lines[~drop], digest[~drop]
        if len(ts):
            self.chunks.append((int(ts[0]), int(ts[-1]), ts, lines, digest))
        return bars, lines, bad, duplicates

    def _bad(self, line: int, ts: int, first_line: int) -> BadRow:
        return BadRow(
            line,
            self.label,
            from_epoch_us(ts).isoformat().replace("+00:00", "Z"),
            f"repeats the time of line {first_line} with other values",
        )


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run ``items`` on a second thread, ``depth`` items ahead of the consumer."""
    box: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer to re-raise
            box.put(("error", exc))

    worker = threading.Thread(target=produce, name="marketlake-csv-reader", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = box.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while worker.is_alive():
            try:
                box.get(timeout=0.1)
            except queue.Empty:
                continue
        worker.join()
