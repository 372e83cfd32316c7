"""Quality checks against the store: stored bars, what an ingest job wrote, gaps.

- :func:`validate_store` runs every rule over stored series and saves the report
  (``marketlake validate``);
- :class:`IngestQuality` is what an ingest job (and a CSV import) uses: it applies
  the policy to each batch before it is written, then checks the written range for
  gaps and saves one report for the job;
- :func:`stored_gaps` compares the stored bars of a series with those expected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from marketlake.errors import NotFoundError
from marketlake.quality.gaps import GapScan, find_gaps, is_aligned, outside_rows
from marketlake.quality.policy import (
    QualityPolicy,
    QualityReport,
    SeriesQuality,
    gap_finding,
    save_report,
    scope_of,
)
from marketlake.quality.rules import SPLITS, apply_policy, split_actions, validate_bars
from marketlake.schema import (
    Instrument,
    Timeframe,
    default_instrument,
    normalize_symbol,
    to_epoch_us,
    utcnow,
)
from marketlake.store.base import Store
from marketlake.timeseries.columns import int64_values


def instrument_of(store: Store, symbol: str) -> Instrument:
    """The registered instrument, or the defaults for an unregistered symbol."""
    return store.instrument(symbol, missing_ok=True) or default_instrument(symbol)


def validate_store(
    store: Store,
    symbols: Sequence[str] | None = None,
    timeframes: Sequence[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    policy: QualityPolicy | None = None,
    save: bool = True,
) -> QualityReport:
    """Check stored series (all, or those of ``symbols`` and ``timeframes``) in
    ``[start, end)``; the report is saved unless ``save=False``."""
    policy = policy or QualityPolicy()
    wanted = {normalize_symbol(s) for s in symbols} if symbols else None
    frames = {str(Timeframe.parse(t)) for t in timeframes} if timeframes else None
    series = [
        (row["symbol"], row["timeframe"])
        for row in store.bar_summary()
        if (wanted is None or row["symbol"] in wanted)
        and (frames is None or row["timeframe"] in frames)
    ]
    if not series:
        what = ", ".join(sorted(wanted)) if wanted else "any symbol"
        raise NotFoundError(
            f"no stored bars for {what}"
            + (f" at {', '.join(sorted(frames))}" if frames else "")
            + "; ingest some first (`marketlake ingest ...`)"
        )
    report = QualityReport(kind="validate")
    for symbol, timeframe in series:
        table = store.read_bars(symbol, timeframe, start, end).table
        if table.num_rows:
            found, _ = validate_bars(
                table,
                policy,
                instruments={symbol: instrument_of(store, symbol)},
                corporate_actions=split_actions(store, [symbol]),
            )
            report.extend(found)
    if save:
        save_report(
            store,
            report,
            scope_of([s for s, _ in series], [t for _, t in series], start, end, kind="validate"),
        )
    return report


def stored_gaps(
    store: Store, instrument: Instrument, tf: Timeframe, start: datetime, end: datetime
) -> GapScan:
    """Expected and stored bars of a series in ``[start, end)`` (bars outside sessions
    and at misaligned times fill no slot)."""
    return stored_gaps_of(store, {instrument.symbol: instrument}, tf, start, end)[instrument.symbol]


def stored_gaps_of(
    store: Store,
    instruments: Mapping[str, Instrument],
    tf: Timeframe,
    start: datetime,
    end: datetime,
) -> dict[str, GapScan]:
    """:func:`stored_gaps` of several symbols, read with one query."""
    symbols = sorted(instruments)
    table = store.bar_times(symbols, tf, start, end)
    ts_all = int64_values(table.column("ts")) if table.num_rows else np.empty(0, np.int64)
    # each symbol's times, in time order, whatever order the database sorts symbols in
    codes = (
        pc.index_in(table.column("symbol"), pa.array(symbols, pa.string())).to_numpy(
            zero_copy_only=False
        )
        if table.num_rows
        else np.empty(0, np.int64)
    )
    order = np.argsort(codes, kind="stable")
    ts_all, codes = ts_all[order], codes[order]
    scans = {}
    for k, symbol in enumerate(symbols):
        lo, hi = np.searchsorted(codes, [k, k + 1])
        ts = ts_all[lo:hi]
        ts = ts[is_aligned(ts, tf)]
        ts = np.delete(ts, outside_rows(ts, tf, instruments[symbol]))
        scans[symbol] = find_gaps(ts, instruments[symbol], tf, to_epoch_us(start), to_epoch_us(end))
    return scans


@dataclass
class IngestQuality:
    """The quality side of one job that writes bars (an ingest job, a CSV import): policy
    per batch, gaps per symbol, one report.

    ``start``/``end`` bound the range the job covers; when None (a CSV import, whose
    range is the file's), each symbol's range runs from its first to its last checked bar.
    """

    store: Store
    policy: QualityPolicy
    timeframe: Timeframe
    start: datetime | None
    end: datetime | None
    kind: str = "ingest"
    report: QualityReport = field(default_factory=QualityReport)
    _series: dict[str, SeriesQuality] = field(default_factory=dict)
    _flagged_present: dict[str, int] = field(default_factory=dict)
    """Per symbol: flagged bars that fill an expected slot (not those outside sessions)."""
    _splits_read: set[str] = field(default_factory=set)
    _split_table: pa.Table = field(default_factory=SPLITS.empty_table)

    def __post_init__(self) -> None:
        self.report.kind = self.kind

    def check(self, batch: pa.Table) -> tuple[pa.Table, QualityReport]:
        """The rows of ``batch`` to write, and what the rules found in it (recorded)."""
        kept, found = self.inspect(batch)
        self.record(found)
        return kept, found

    def inspect(
        self, batch: pa.Table, instruments: Mapping[str, Instrument] | None = None
    ) -> tuple[pa.Table, QualityReport]:
        """Like :meth:`check`, without recording the findings in the job's report yet: a
        caller whose write may roll back records them with :meth:`record` once it commits.
        ``instruments`` may hold the batch's instruments (else they are read from the store)."""
        return apply_policy(
            batch,
            self.policy,
            store=self.store,
            instruments=instruments,
            corporate_actions=self._splits(batch),
            gaps=False,
            kind=self.kind,
        )

    def _splits(self, batch: pa.Table) -> pa.Table:
        """The recorded splits of the batch's symbols, read once per symbol for the job (the
        job records a symbol's splits after its last batch)."""
        symbols = pc.unique(batch.column("symbol")).to_pylist()
        unread = [s for s in symbols if s not in self._splits_read]
        if unread:
            self._split_table = pa.concat_tables(
                [self._split_table, split_actions(self.store, unread)]
            )
            self._splits_read.update(unread)
        return self._split_table

    def record(self, found: QualityReport) -> None:
        """Add what :meth:`inspect` found in a batch to the job's report."""
        self.report.rows += found.rows
        self.report.findings.extend(found.findings)
        for rule, n in found.counts.items():
            self.report.counts[rule] = self.report.counts.get(rule, 0) + n
        self.report.truncated |= found.truncated
        for stats in found.series:
            self._add(stats)

    def _add(self, stats: SeriesQuality) -> None:
        total = self._series.setdefault(stats.symbol, SeriesQuality(stats.symbol, stats.timeframe))
        for name in ("bars", "errors", "warnings", "rejected", "flagged"):
            setattr(total, name, getattr(total, name) + getattr(stats, name))
        self._flagged_present[stats.symbol] = (
            self._flagged_present.get(stats.symbol, 0) + stats.present - stats.clean
        )
        total.first = min(filter(None, (total.first, stats.first)), default=None)
        total.last = max(filter(None, (total.last, stats.last)), default=None)

    def scans(self, instruments: Mapping[str, Instrument]) -> dict[str, GapScan]:
        """The gap scans of the job's range for several symbols at once (one query), for
        :meth:`finish`; empty when the job has no fixed range."""
        if self.start is None or self.end is None or not instruments:
            return {}
        end = min(self.end, utcnow())
        if self.start >= end:
            return {}
        return stored_gaps_of(self.store, instruments, self.timeframe, self.start, end)

    def finish(
        self, symbol: str, instrument: Instrument | None = None, scan: GapScan | None = None
    ) -> SeriesQuality:
        """Check the job's range of ``symbol`` in the store for gaps; score it.
        ``instrument``: the symbol's, when the caller has it at hand; ``scan``: its
        scan from :meth:`scans`."""
        symbol = normalize_symbol(symbol)
        stats = self._series.pop(symbol, SeriesQuality(symbol, str(self.timeframe)))
        flagged = self._flagged_present.pop(symbol, 0)
        start = self.start or stats.first
        end = self.end or (self.timeframe.next_start(stats.last) if stats.last else None)
        if start is not None and end is not None:
            end = min(end, utcnow())
        if start is not None and end is not None and start < end:
            scan = scan or stored_gaps(
                self.store,
                instrument or instrument_of(self.store, symbol),
                self.timeframe,
                start,
                end,
            )
            stats.expected, stats.present = scan.expected, scan.present
            stats.clean = max(0, scan.present - flagged)
            if self.policy.enabled("gap") and scan.gaps:
                self.report.counts["gap"] = self.report.counts.get("gap", 0) + len(scan.gaps)
                self.report.truncated |= len(scan.gaps) > self.policy.max_findings
                stats.warnings += len(scan.gaps)
                self.report.findings.extend(
                    gap_finding(symbol, str(self.timeframe), g)
                    for g in scan.gaps[: self.policy.max_findings]
                )
        self.report.series.append(stats)
        return stats

    def save(self, job_id: str, symbols: Sequence[str], **scope: Any) -> str:
        """Store the job's report (``scope``: e.g. the provider or the file); return its id."""
        self.report.job_id = job_id
        firsts = [s.first for s in self.report.series if s.first is not None]
        lasts = [s.last for s in self.report.series if s.last is not None]
        start = self.start or min(firsts, default=None)
        end = self.end or (self.timeframe.next_start(max(lasts)) if lasts else None)
        return save_report(
            self.store,
            self.report,
            scope_of(symbols, [str(self.timeframe)], start, end, kind=self.kind, **scope),
        )


def series_spans(table: pa.Table) -> dict[str, tuple[datetime, datetime]]:
    """The first and last bar time of each symbol of a table."""
    if table.num_rows == 0:
        return {}
    spans = table.group_by("symbol").aggregate([("ts", "min"), ("ts", "max")]).to_pylist()
    return {row["symbol"]: (row["ts_min"], row["ts_max"]) for row in spans}
