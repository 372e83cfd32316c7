"""Data-quality rules over canonical bars, vectorised, and the policy that applies them.

:func:`apply_policy` is what ingest and CSV import call: it checks a table of bars
and returns the rows to store (without those a ``reject`` rule caught) and a
:class:`~marketlake.quality.policy.QualityReport`. :func:`validate_bars` is the check
itself. The rules (severity and default action in :data:`~marketlake.quality.policy.RULES`):

- ``ohlc``: low <= min(open, close), high >= max(open, close), low <= high;
- ``price``: prices positive and finite; ``volume``: finite and not negative;
- ``duplicate``: one timestamp holding bars with different values (every such bar);
- ``misaligned``: a timestamp that is not a bar start of its timeframe;
- ``vwap``: a vwap (when given) outside [low, high] (a mislabelled column, e.g. a quote
  volume read as the vwap);
- ``closed_day``: a daily bar on a day the instrument's calendar has no session (a
  weekend, a holiday, or dates shifted by a timezone); an error, rejected by default;
- ``outside_session``: an intraday bar outside the exchange sessions (holidays and half
  days from ``exchange-calendars``; crypto trades 24/7, see
  :mod:`marketlake.timeseries.sessions`);
- ``gap``: expected session bars that are missing, as ranges;
- ``stale``: the same close ``stale_bars`` times in a row while volume trades;
- ``outlier``: a return beyond ``outlier_z`` robust z-scores (median and MAD of the
  series' log returns);
- ``split``: a jump of about x2, x3, x4, x5, x10 … or their inverses from one close
  to the next open with no split recorded in ``corporate_actions`` nearby.

Every rule works on whole NumPy columns; Python only loops over series (one per
symbol and timeframe) and over the findings it reports, at most
``policy.max_findings`` per rule and series (counts stay exact).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from marketlake.quality.gaps import Gap, find_gaps, is_aligned, outside_rows
from marketlake.quality.policy import (
    RULES,
    Finding,
    QualityPolicy,
    QualityReport,
    SeriesQuality,
    gap_finding,
)
from marketlake.schema import (
    BAR_SCHEMA,
    Instrument,
    Timeframe,
    default_instrument,
    from_epoch_us,
    normalize_bars,
)
from marketlake.store.base import Store
from marketlake.timeseries.columns import MAX_SLICES, SortedBars, float_values, int64_values, slices
from marketlake.timeseries.kernels import (
    MISALIGNED,
    OHLC,
    PRICE,
    REPEATED,
    VOLUME,
    price_jumps,
    row_flags,
    stale_runs,
)
from marketlake.timeseries.sessions import DAY_US
from marketlake.timeseries.times import iso_z

__all__ = [
    "SPLITS",
    "QualityPolicy",
    "QualityReport",
    "apply_policy",
    "split_actions",
    "validate_bars",
]

Array = np.ndarray[Any, Any]
SPLIT_FACTORS = np.array([2.0, 3.0, 4.0, 5.0, 8.0, 10.0, 15.0, 20.0, 25.0, 50.0, 100.0, 1.5])
_JUMP = 1.4  # a close-to-open move smaller than this is never split-like
_BLOCK = 512  # returns per block of the local outlier scale
_PER_BLOCK = 64  # returns sampled per block


def apply_policy(
    table: pa.Table,
    policy: QualityPolicy | None = None,
    *,
    store: Store | None = None,
    instruments: Mapping[str, Instrument] | None = None,
    corporate_actions: pa.Table | None = None,
    gaps: bool = True,
    kind: str = "validate",
) -> tuple[pa.Table, QualityReport]:
    """Check ``table`` and return ``(kept_rows, report)``.

    ``kept_rows`` is ``table`` without the bars caught by a rule whose action is
    ``reject``; flagged bars stay and are reported. Instruments and recorded splits
    come from ``instruments``/``corporate_actions`` or else from ``store`` (or
    defaults). ``gaps=False`` skips gap detection (for one batch of a longer job).
    """
    policy = policy or QualityPolicy()
    if not table.schema.equals(BAR_SCHEMA):
        table = normalize_bars(_nulls_as_nan(table))
    if store is not None:
        instruments = instruments or _store_instruments(store, table)
        if corporate_actions is None:
            corporate_actions = split_actions(store, _symbols(table))
    report, _ = validate_bars(
        table, policy, instruments=instruments, corporate_actions=corporate_actions, gaps=gaps
    )
    report.kind = kind
    kept = _without_rows(table, report.rejected_rows) if report.rejected else table
    return kept, report


def _without_rows(table: pa.Table, rows: Array) -> pa.Table:
    """``table`` without ``rows`` (ascending): zero-copy slices around a few rows (filtering
    every column, strings included, costs more than the checks), else a filter."""
    if len(rows) > MAX_SLICES:
        keep = np.ones(table.num_rows, dtype=bool)
        keep[rows] = False
        return table.filter(pa.array(keep))
    return slices(table, [0, *(rows + 1).tolist()], [*rows.tolist(), table.num_rows])


def validate_bars(
    table: pa.Table,
    policy: QualityPolicy | None = None,
    *,
    instruments: Mapping[str, Instrument] | None = None,
    corporate_actions: pa.Table | None = None,
    gaps: bool = True,
    ranges: Mapping[tuple[str, str], tuple[int, int]] | None = None,
) -> tuple[QualityReport, Array]:
    """Run every enabled rule; return the report and a mask of the rows to reject.

    ``ranges`` may give per (symbol, timeframe) the half-open span (epoch µs) in
    which bars are expected; by default it runs from the first to the last bar.
    """
    policy = policy or QualityPolicy()
    report = QualityReport(rows=table.num_rows)
    reject = np.zeros(table.num_rows, dtype=bool)
    if table.num_rows == 0:
        return report, reject
    bars = SortedBars.of(table, by_timeframe=True)
    known = instruments or {}
    splits = _split_times(corporate_actions)
    checker = _Checker(bars, policy, report)
    checker.row_rules()
    for k, symbol in enumerate(bars.symbols):
        instrument = known.get(symbol) or default_instrument(symbol)
        span = (ranges or {}).get((symbol, bars.timeframes[k]))
        checker.series(k, instrument, splits.get(symbol, np.empty(0, np.int64)), gaps, span)
    rejected = np.zeros(table.num_rows, dtype=bool)  # in the rows of `bars`
    for rule, rows in checker.rows.items():
        if policy.rejects(rule) and rows:
            rejected[np.concatenate(rows)] = True
    reject[bars.input_rows(np.flatnonzero(rejected))] = True
    report.rejected_rows = np.flatnonzero(reject)
    for k, stats in enumerate(report.series):
        lo, hi = int(bars.starts[k]), int(bars.ends[k])
        stats.rejected = int(rejected[lo:hi].sum())
        caught = checker.caught(lo, hi)
        stats.flagged = len(caught) - int(rejected[caught].sum())
    return report, reject


@dataclass
class _Checker:
    """The rules over one table: flags from one compiled pass, findings, series statistics."""

    bars: SortedBars
    policy: QualityPolicy
    report: QualityReport
    rows: dict[str, list[Array]] = field(default_factory=dict)  # rows of `bars` per rule

    def __post_init__(self) -> None:
        table, bars = self.bars.table, self.bars
        self.ts = bars.ts
        self.o, self.h, self.l, self.c, self.v = (
            float_values(table.column(name)) for name in ("open", "high", "low", "close", "volume")
        )
        steps, origins = _alignment(bars.timeframes)
        self.flags, count = row_flags(
            self.o, self.h, self.l, self.c, self.v, self.ts, bars.starts, bars.ends, steps, origins
        )
        self.bad = np.flatnonzero(self.flags) if count else np.empty(0, np.int64)
        self.severities = [{"error": 0, "warning": 0} for _ in bars.symbols]
        self.conflicts = self._conflicting_duplicates()

    # -- bookkeeping -------------------------------------------------------------------

    def add(self, rule: str, k: int, rows: Array, describe: _Describe) -> None:
        """Record findings of ``rule`` on ``rows`` (rows of ``bars``) of series ``k``."""
        if not self.policy.enabled(rule) or len(rows) == 0:
            return
        self.rows.setdefault(rule, []).append(rows)
        shown = rows[: self.policy.max_findings]
        self._report(
            rule,
            k,
            len(rows),
            self.ts[shown],
            None,
            self.bars.input_rows(shown).tolist(),
            describe(shown, k),
        )

    def _report(
        self,
        rule: str,
        k: int,
        count: int,
        starts: Array,
        ends: Array | None,
        rows: list[Any] | None,
        items: Iterable[tuple[dict[str, Any], str]],
    ) -> None:
        """Count ``count`` findings of ``rule``; keep the first ``max_findings`` of ``items``
        (starting at ``starts``, ending at ``ends`` for ranges, from input ``rows``)."""
        report, limit = self.report, self.policy.max_findings
        report.counts[rule] = report.counts.get(rule, 0) + count
        severity = RULES[rule].severity
        self.severities[k][severity] += count
        report.truncated = report.truncated or count > limit
        shown = len(starts[:limit])
        stops: list[Any] = [None] * shown if ends is None else ends[:limit].tolist()
        for t, stop, row, (values, message) in zip(
            starts[:limit].tolist(), stops, rows or [None] * shown, items, strict=False
        ):
            report.findings.append(
                Finding(
                    rule,
                    severity,
                    self.bars.symbols[k],
                    self.bars.timeframes[k],
                    from_epoch_us(t),
                    None if stop is None else from_epoch_us(stop),
                    values,
                    message,
                    row,
                )
            )

    def caught(self, lo: int, hi: int) -> Array:
        """Rows in ``[lo, hi)`` with a finding of an enabled rule."""
        parts = [
            rows[np.searchsorted(rows, lo) : np.searchsorted(rows, hi)]
            for arrays in self.rows.values()
            for rows in arrays
        ]
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    # -- rules on every row -------------------------------------------------------------

    def row_rules(self) -> None:
        bits = self.flags[self.bad]
        for rule, bit, describe in (
            ("price", PRICE, self._describe_price),
            ("ohlc", OHLC, self._describe_ohlc),
            ("volume", VOLUME, self._describe_volume),
            ("misaligned", MISALIGNED, self._describe_misaligned),
        ):
            self._per_series(rule, self.bad[(bits & bit) != 0], describe)
        self._per_series("duplicate", self.conflicts, self._describe_duplicate)
        if self.policy.enabled("vwap"):
            self._per_series("vwap", self._vwap_outside(), self._describe_vwap)

    def _vwap_outside(self) -> Array:
        """Rows whose vwap is given and lies outside [low, high] (a relative 1e-9 slack
        for rounding); rows with broken prices are left to the price and ohlc rules."""
        self.w = float_values(self.bars.table.column("vwap"))
        slack = 1e-9 * np.abs(self.h)
        with np.errstate(invalid="ignore"):
            outside = ~np.isnan(self.w) & (
                (self.w < self.l - slack) | (self.w > self.h + slack) | ~np.isfinite(self.w)
            )
        outside &= self.flags & (PRICE | OHLC) == 0
        return np.flatnonzero(outside)

    def _describe_vwap(self, rows: Array, k: int) -> Iterable[tuple[dict[str, Any], str]]:
        for values, vwap in zip(self._ohlc_values(rows), self.w[rows].tolist(), strict=True):
            values["vwap"] = vwap
            yield (
                values,
                (
                    f"vwap {vwap} is outside [low {values['low']}, high {values['high']}]; "
                    "the source's vwap column holds something else (e.g. a quote volume)"
                ),
            )

    def _per_series(self, rule: str, rows: Array, describe: _Describe) -> None:
        series = self.bars.series_of(rows)
        for k in np.unique(series).tolist():
            self.add(rule, k, rows[series == k], describe)

    def _conflicting_duplicates(self) -> Array:
        """Every row of a timestamp that holds bars with different values."""
        repeats: Array = self.bad[(self.flags[self.bad] & REPEATED) != 0]
        if len(repeats) == 0:
            return repeats
        table = self.bars.table
        differs = np.zeros(len(repeats), dtype=bool)
        for name in ("open", "high", "low", "close", "volume", "vwap", "trades"):
            values = (
                float_values(table.column(name))
                if name != "trades"
                else int64_values(table.column(name).fill_null(-1)).astype(np.float64)
            )
            a, b = values[repeats], values[repeats - 1]
            differs |= ~((a == b) | (np.isnan(a) & np.isnan(b)))
        new_key = np.concatenate([[True], np.diff(repeats) != 1])
        key = np.cumsum(new_key) - 1
        first = (repeats - 1)[new_key]  # the first bar at each repeated timestamp
        bad = np.unique(key[differs])
        rows: Array = np.union1d(first[bad], repeats[np.isin(key, bad)])
        return rows

    def _describe_price(self, rows: Array, k: int) -> Iterable[tuple[dict[str, Any], str]]:
        for values in self._ohlc_values(rows):
            wrong = next(
                n for n in ("open", "high", "low", "close") if not 0 < values[n] < float("inf")
            )
            yield (
                values,
                (
                    f"{wrong} {values[wrong]} is not a positive finite price; fix the "
                    "source or drop the bar"
                ),
            )

    def _describe_ohlc(self, rows: Array, k: int) -> Iterable[tuple[dict[str, Any], str]]:
        for values in self._ohlc_values(rows):
            o, h, lo, c = (values[n] for n in ("open", "high", "low", "close"))
            if h < lo:
                message = f"high {h} is below low {lo}"
            elif lo > min(o, c):
                message = f"low {lo} is above min(open, close) {min(o, c)}"
            else:
                message = f"high {h} is below max(open, close) {max(o, c)}"
            yield values, message

    def _describe_volume(self, rows: Array, k: int) -> Iterable[tuple[dict[str, Any], str]]:
        for volume in self.v[rows].tolist():
            yield {"volume": volume}, f"volume {volume} is not a finite number >= 0"

    def _describe_duplicate(self, rows: Array, k: int) -> Iterable[tuple[dict[str, Any], str]]:
        series = self.ts[self.bars.starts[k] : self.bars.ends[k]]
        for values, row in zip(self._ohlc_values(rows), rows.tolist(), strict=True):
            t = self.ts[row]
            same = int(np.searchsorted(series, t, "right") - np.searchsorted(series, t, "left"))
            yield (
                values,
                (
                    f"{same} bars at {iso_z(int(t))} with different values; keep one "
                    "(e.g. re-fetch the range)"
                ),
            )

    def _describe_misaligned(self, rows: Array, k: int) -> Iterable[tuple[dict[str, Any], str]]:
        tf = self.bars.timeframes[k]
        for t in self.ts[rows].tolist():
            yield (
                {"ts": iso_z(t)},
                f"{iso_z(t)} is not the start of a {tf} bar (bars start at multiples of {tf} "
                "from 1970-01-01 UTC; daily bars at 00:00 UTC of the trading date)",
            )

    def _ohlc_values(self, rows: Array) -> list[dict[str, Any]]:
        return [
            {"open": o, "high": h, "low": lo, "close": c}
            for o, h, lo, c in zip(
                self.o[rows].tolist(),
                self.h[rows].tolist(),
                self.l[rows].tolist(),
                self.c[rows].tolist(),
                strict=True,
            )
        ]

    # -- rules per series ---------------------------------------------------------------

    def series(
        self,
        k: int,
        instrument: Instrument,
        splits: Array,
        gaps: bool,
        span: tuple[int, int] | None,
    ) -> None:
        """Calendar rules, series rules, gaps and the quality score of series ``k``."""
        lo, hi = int(self.bars.starts[k]), int(self.bars.ends[k])
        tf = Timeframe.parse(self.bars.timeframes[k])
        ts = self.ts[lo:hi]
        bad = self.bad[np.searchsorted(self.bad, lo) : np.searchsorted(self.bad, hi)]
        uncounted = bad[(self.flags[bad] & (MISALIGNED | REPEATED)) != 0]
        if tf.unit == "mo":  # months have no fixed step: checked here instead of the kernel
            misaligned = lo + np.flatnonzero(~is_aligned(ts, tf))
            self.add("misaligned", k, misaligned, self._describe_misaligned)
            uncounted = np.union1d(uncounted, misaligned)
        outside = lo + outside_rows(ts, tf, instrument)
        rule = "closed_day" if str(tf) == "1d" else "outside_session"
        self.add(rule, k, outside, lambda rows, _: self._describe_outside(rows, instrument, tf))
        uncounted = np.union1d(uncounted, outside)
        conflicts = self.conflicts[
            np.searchsorted(self.conflicts, lo) : np.searchsorted(self.conflicts, hi)
        ]
        excluded = np.union1d(np.union1d(bad, conflicts), uncounted)
        self._series_rules(k, lo, hi, _without(lo, hi, excluded), tf, splits)
        counted = _without(lo, hi, uncounted)
        present = ts if counted is None else self.ts[counted]
        if span is None:  # from the first to the last bar that fills a slot
            span = (int(present[0]), int(present[-1]) + 1) if len(present) else (0, 0)
        found = find_gaps(present, instrument, tf, int(span[0]), int(span[1]))
        if gaps:
            self._gap_findings(k, found.gaps, tf)
        caught = self.caught(lo, hi)
        flagged_present = len(caught) - int(np.isin(caught, uncounted).sum())
        self.report.series.append(
            SeriesQuality(
                instrument.symbol,
                str(tf),
                bars=hi - lo,
                expected=found.expected,
                present=found.present,
                clean=max(0, found.present - flagged_present),
                errors=self.severities[k]["error"],
                warnings=self.severities[k]["warning"],
                first=from_epoch_us(int(ts[0])),
                last=from_epoch_us(int(ts[-1])),
            )
        )

    def _series_rules(
        self, k: int, lo: int, hi: int, rows: Array | None, tf: Timeframe, splits: Array
    ) -> None:
        """Stale closes, outliers and split-like jumps over the clean bars of a series."""
        index = np.arange(lo, hi) if rows is None else rows
        part: slice | Array = slice(lo, hi) if rows is None else rows
        o, c, v, ts = self.o[part], self.c[part], self.v[part], self.ts[part]
        if len(c) < 2:
            return
        if self.policy.enabled("stale"):
            self._stale(k, index, c, v, ts, tf)
        if not (self.policy.enabled("split") or self.policy.enabled("outlier")):
            return
        upper, lower = _block_bounds(c, self.policy.outlier_z)
        candidates, outliers = price_jumps(
            o, c, ts, tf.micros if tf.is_intraday else 0, _BLOCK, upper, lower, _JUMP
        )
        like, recorded = _split_like(
            c[candidates - 1] / o[candidates],
            self.policy.split_tolerance,
            ts[candidates],
            splits,
            self.policy.split_window_days,
        )
        split = candidates[like & ~recorded]
        self.add("split", k, index[split], lambda r, _: self._describe_split(r, index))
        outliers = np.setdiff1d(outliers, candidates[like], assume_unique=True)
        self.add("outlier", k, index[outliers], lambda r, _: self._describe_outlier(r, index))

    def _stale(self, k: int, index: Array, c: Array, v: Array, ts: Array, tf: Timeframe) -> None:
        first, last = stale_runs(c, v, self.policy.stale_bars)
        if len(first) == 0:
            return
        self.rows.setdefault("stale", []).append(
            np.concatenate(
                [index[a : b + 1] for a, b in zip(first.tolist(), last.tolist(), strict=True)]
            )
        )
        closes, counts = c[first].tolist(), (last - first + 1).tolist()
        self._report(
            "stale",
            k,
            len(first),
            ts[first],
            ts[last] + _step_us(tf),
            None,
            (
                (
                    {"close": close, "bars": n},
                    f"close {close} unchanged for {n} bars while volume traded (a frozen feed?)",
                )
                for close, n in zip(closes, counts, strict=True)
            ),
        )

    def _gap_findings(self, k: int, gaps: list[Gap], tf: Timeframe) -> None:
        if not gaps or not self.policy.enabled("gap"):
            return
        shown = [
            gap_finding(self.bars.symbols[k], str(tf), g) for g in gaps[: self.policy.max_findings]
        ]
        self._report(
            "gap",
            k,
            len(gaps),
            np.array([g.start for g in gaps[: len(shown)]]),
            np.array([g.end for g in gaps[: len(shown)]]),
            None,
            ((f.values, f.message) for f in shown),
        )

    def _describe_outside(
        self, rows: Array, instrument: Instrument, tf: Timeframe
    ) -> Iterable[tuple[dict[str, Any], str]]:
        from marketlake.timeseries.sessions import calendar_name

        calendar = calendar_name(instrument)
        for t in self.ts[rows].tolist():
            if tf.is_intraday:
                yield (
                    {"ts": iso_z(t), "calendar": calendar},
                    f"bar at {iso_z(t)} is outside the {calendar} trading sessions",
                )
                continue
            day = from_epoch_us(t)
            yield (
                {"ts": iso_z(t)[:10], "calendar": calendar},
                (
                    f"daily bar on {day:%Y-%m-%d} ({day:%A}), a day with no {calendar} "
                    "session; are the dates shifted (check --tz) or the exchange wrong?"
                ),
            )

    def _describe_split(self, rows: Array, index: Array) -> Iterable[tuple[dict[str, Any], str]]:
        for row in rows.tolist():
            before = int(index[np.searchsorted(index, row) - 1])
            close, open_ = float(self.c[before]), float(self.o[row])
            ratio = close / open_
            yield (
                {"prev_close": close, "open": open_, "ratio": round(ratio, 4)},
                (
                    f"price jumps from close {close} to open {open_} (x{1 / ratio:.3g}), like a "
                    f"split, but no split is recorded near {iso_z(int(self.ts[row]))[:10]}; record "
                    "it in corporate_actions or fix the data"
                ),
            )

    def _describe_outlier(self, rows: Array, index: Array) -> Iterable[tuple[dict[str, Any], str]]:
        for row in rows.tolist():
            before = int(index[np.searchsorted(index, row) - 1])
            change = float(self.c[row] / self.c[before] - 1)
            yield (
                {
                    "prev_close": float(self.c[before]),
                    "close": float(self.c[row]),
                    "return": round(change, 6),
                },
                (
                    f"return {change:+.2%} is beyond {self.policy.outlier_z:g} robust z-scores of "
                    "the returns around it"
                ),
            )


_Describe = Callable[[Array, int], Iterable[tuple[dict[str, Any], str]]]


def _alignment(timeframes: list[str]) -> tuple[Array, Array]:
    """Step and origin of the bar starts of each series (step 0: months, checked apart)."""
    steps, origins = [], []
    for text in timeframes:
        tf = Timeframe.parse(text)
        steps.append(0 if tf.is_calendar else tf.micros)
        origins.append(4 * DAY_US if tf.unit == "w" else 0)
    return np.asarray(steps, np.int64), np.asarray(origins, np.int64)


def _without(lo: int, hi: int, rows: Array) -> Array | None:
    """Rows ``lo..hi`` except ``rows`` (None when none is left out: use the slice)."""
    if len(rows) == 0:
        return None
    keep = np.ones(hi - lo, dtype=bool)
    keep[rows - lo] = False
    return lo + np.flatnonzero(keep)


def _block_bounds(close: Array, z: float) -> tuple[Array, Array]:
    """Per block of :data:`_BLOCK` returns, the band ``1 ± z * scale`` a return may move in.

    ``scale`` is 1.4826 x the median absolute return of a sample of the block (a
    robust standard deviation); where that is 0 (prices mostly unchanged) the mean
    absolute return of the series' sample stands in.
    """
    n = len(close) - 1
    blocks = -(-n // _BLOCK)
    index = np.arange(1, n + 1, _BLOCK // _PER_BLOCK)
    with np.errstate(invalid="ignore", divide="ignore"):
        move = np.abs(close[index] / close[index - 1] - 1.0)
    move[~np.isfinite(move)] = 0.0
    full = len(index) // _PER_BLOCK
    medians = np.zeros(blocks)
    middle = _PER_BLOCK // 2  # the upper median is robust enough for a scale
    medians[:full] = np.partition(
        move[: full * _PER_BLOCK].reshape(full, _PER_BLOCK), middle, axis=1
    )[:, middle]
    if full < blocks:
        medians[full:] = np.median(move[full * _PER_BLOCK :])
    scale = 1.4826 * medians
    fallback = 1.2533 * float(move.mean())
    scale = np.where(scale > 0, scale, fallback if fallback > 0 else np.inf)
    return 1.0 + z * scale, 1.0 - z * scale


def _nulls_as_nan(table: pa.Table) -> pa.Table:
    """Empty prices and volumes become NaN, so the price and volume rules report them."""
    for name in ("open", "high", "low", "close", "volume"):
        if name in table.column_names and table.column(name).null_count:
            column = table.column(name).cast(pa.float64()).fill_null(float("nan"))
            table = table.set_column(table.column_names.index(name), name, column)
    return table


def _positive(x: Array) -> Array:
    return np.asarray((x > 0) & (x < np.inf))


def _step_us(tf: Timeframe) -> int:
    return tf.micros if not tf.is_calendar else 31 * DAY_US


def _split_like(
    gap: Array, tolerance: float, ts: Array, splits: Array, window_days: int
) -> tuple[Array, Array]:
    """Which jumps (close -> next open ratios) lie within ``tolerance`` of a split ratio,
    and which of those have a split recorded within ``window_days``."""
    factor = np.where(gap >= 1, gap, 1 / gap)
    nearest = SPLIT_FACTORS[np.argmin(np.abs(factor[:, None] / SPLIT_FACTORS[None, :] - 1), 1)]
    like = np.abs(factor / nearest - 1) <= tolerance
    recorded = np.zeros(len(gap), dtype=bool)
    if len(splits):
        window = window_days * DAY_US
        after = np.searchsorted(splits, ts - window)
        recorded = (after < len(splits)) & (
            splits[np.minimum(after, len(splits) - 1)] <= ts + window
        )
    return like, recorded


def _split_times(actions: pa.Table | None) -> dict[str, Array]:
    """Recorded split times (epoch µs, sorted) per symbol."""
    if actions is None or actions.num_rows == 0:
        return {}
    rows = [r for r in actions.to_pylist() if r["kind"] == "split"]
    out: dict[str, list[int]] = {}
    for row in rows:
        out.setdefault(row["symbol"], []).append(int(row["ts"].timestamp() * 1_000_000))
    return {s: np.sort(np.asarray(t, dtype=np.int64)) for s, t in out.items()}


def _symbols(table: pa.Table) -> list[str]:
    from marketlake.timeseries.columns import string_runs

    return sorted(set(string_runs(table.column("symbol"))[1]))


def _store_instruments(store: Store, table: pa.Table) -> dict[str, Instrument]:
    found = {s: store.instrument(s, missing_ok=True) for s in _symbols(table)}
    return {s: i for s, i in found.items() if i is not None}


def split_actions(store: Store, symbols: list[str]) -> pa.Table:
    """The splits recorded in the store's ``corporate_actions`` for ``symbols``."""
    if not symbols:
        return SPLITS.empty_table()
    found = store.read_actions(symbols, kind="split")
    return found.select(SPLITS.names).cast(SPLITS)


SPLITS = pa.schema(
    [
        ("symbol", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("kind", pa.string()),
        ("value", pa.float64()),
    ]
)
"""The columns of :func:`split_actions`' table."""
