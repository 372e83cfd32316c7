"""Which bars a series should have: alignment, trading sessions, and the gaps between.

The expected bars of an intraday timeframe are the epoch-aligned buckets that
overlap a trading interval of the instrument's calendar (lunch breaks excluded);
of ``1d`` the trading dates; of ``Nd``, ``1w`` and ``1mo`` every bucket of the
span. Everything is computed per trading interval, so a five-year series of
1-minute bars costs a few thousand array operations, not millions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from marketlake.schema import Instrument, Timeframe
from marketlake.timeseries.sessions import DAY_US, Sessions, sessions_for

Array = np.ndarray[Any, Any]
_WEEK_ORIGIN = 4 * DAY_US  # Monday 1970-01-05


@dataclass(frozen=True, slots=True)
class Gap:
    """``missing`` expected bars from ``start`` to ``end`` (epoch µs, half-open)."""

    start: int
    end: int
    missing: int


@dataclass(frozen=True, slots=True)
class GapScan:
    """Expected and present bars of a span, and the missing ones as ranges."""

    expected: int = 0
    present: int = 0
    gaps: list[Gap] = field(default_factory=list)


def is_aligned(ts: Array, tf: Timeframe) -> Array:
    """True where a timestamp is the start (label) of a bar of ``tf``."""
    if tf.unit == "mo":
        months = ts.astype("datetime64[us]").astype("datetime64[M]")
        return np.asarray(months.astype("datetime64[us]").astype(np.int64) == ts)
    origin = _WEEK_ORIGIN if tf.unit == "w" else 0
    return np.asarray((ts - origin) % tf.micros == 0)


def outside_rows(ts: Array, tf: Timeframe, instrument: Instrument) -> Array:
    """Positions in sorted ``ts`` of bars that overlap no trading interval."""
    if len(ts) == 0 or not (tf.is_intraday or str(tf) == "1d"):
        return np.empty(0, np.int64)
    step = tf.micros
    margin = 0 if tf.is_intraday else 2 * DAY_US  # a session may open the day before its date
    sessions = sessions_for(instrument, int(ts[0]) - margin, int(ts[-1]) + step + margin)
    if sessions.always_open:
        return np.empty(0, np.int64)
    if not tf.is_intraday:
        return np.flatnonzero(~np.isin(ts // DAY_US, sessions.days))
    starts, ends, _ = sessions.intervals()
    first = np.searchsorted(ts, starts - step + 1, side="left")
    end = np.searchsorted(ts, ends, side="left")
    if int((end - first).sum()) == len(ts) and bool(np.all(first[1:] >= end[:-1])):
        return np.empty(0, np.int64)
    depth = np.cumsum(
        np.bincount(first, minlength=len(ts) + 1) - np.bincount(end, minlength=len(ts) + 1)
    )[: len(ts)]
    return np.flatnonzero(depth <= 0)


def find_gaps(present: Array, instrument: Instrument, tf: Timeframe, lo: int, hi: int) -> GapScan:
    """Compare the bars ``present`` (sorted, unique, aligned, in session) with those
    expected in ``[lo, hi)``."""
    if hi <= lo:
        return GapScan()
    if tf.is_intraday:
        return _intraday(present, sessions_for(instrument, lo, hi), tf.micros, lo, hi)
    grid = _calendar_grid(instrument, tf, lo, hi)
    have = _contains(present, grid)
    missing = np.flatnonzero(~have)
    ends = _next_labels(grid, tf)
    gaps = [Gap(int(grid[a]), int(ends[b]), b - a + 1) for a, b in _runs(missing)]
    return GapScan(len(grid), int(have.sum()), gaps)


def _intraday(present: Array, sessions: Sessions, step: int, lo: int, hi: int) -> GapScan:
    starts, ends, _ = sessions.intervals()
    starts, ends = np.maximum(starts, lo), np.minimum(ends, hi)
    keep = ends > starts
    grid_start = starts[keep] // step * step
    grid_end = -(-ends[keep] // step) * step
    if len(grid_start) > 1:  # a bucket shared by two intervals belongs to the first
        grid_start[1:] = np.maximum(grid_start[1:], np.maximum.accumulate(grid_end)[:-1])
    counts = np.maximum(0, (grid_end - grid_start) // step)
    inside = np.searchsorted(present, grid_end, side="left") - np.searchsorted(
        present, grid_start, side="left"
    )
    short = np.flatnonzero(counts > inside)
    scan = GapScan(int(counts.sum()), int(inside.sum()))
    if len(short) == 0:
        return scan
    offsets = np.concatenate([[0], np.cumsum(counts)])
    lengths = counts[short]
    position = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    times = np.repeat(grid_start[short], lengths) + position * step
    index = np.repeat(offsets[short], lengths) + position  # place in the whole grid
    missing = ~_contains(present, times)
    times, index = times[missing], index[missing]
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    first = np.concatenate([[0], breaks])
    last = np.append(breaks, len(index)) - 1
    gaps = [
        Gap(int(times[a]), int(times[b]) + step, int(b - a + 1))
        for a, b in zip(first.tolist(), last.tolist(), strict=True)
    ]
    return GapScan(scan.expected, scan.present, gaps)


def _calendar_grid(instrument: Instrument, tf: Timeframe, lo: int, hi: int) -> Array:
    """Expected labels of daily and coarser bars in ``[lo, hi)``."""
    if str(tf) == "1d":
        sessions = sessions_for(instrument, lo - 2 * DAY_US, hi + 2 * DAY_US)
        days = sessions.days * DAY_US
        return days[(days >= lo) & (days < hi)]
    if tf.unit == "mo":
        months = np.arange(
            np.datetime64(lo, "us").astype("datetime64[M]"),
            np.datetime64(hi - 1, "us").astype("datetime64[M]") + 1,
        )
        grid = months.astype("datetime64[us]").astype(np.int64)
        return grid[grid >= lo]
    origin = _WEEK_ORIGIN if tf.unit == "w" else 0
    first = -(-(lo - origin) // tf.micros) * tf.micros + origin
    return np.arange(first, hi, tf.micros, dtype=np.int64)


def _next_labels(grid: Array, tf: Timeframe) -> Array:
    if tf.unit == "mo":
        months = grid.astype("datetime64[us]").astype("datetime64[M]") + 1
        return months.astype("datetime64[us]").astype(np.int64)
    return grid + (DAY_US if str(tf) == "1d" else tf.micros)


def _contains(sorted_values: Array, needles: Array) -> Array:
    """True where a needle occurs in the sorted array."""
    if len(sorted_values) == 0:
        return np.zeros(len(needles), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_values, needles), len(sorted_values) - 1)
    return np.asarray(sorted_values[at] == needles)


def _runs(positions: Array) -> list[tuple[int, int]]:
    """Consecutive runs of sorted integer positions, as (first, last) pairs."""
    if len(positions) == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    first = positions[np.concatenate([[0], breaks])]
    last = positions[np.append(breaks, len(positions)) - 1]
    return list(zip(first.tolist(), last.tolist(), strict=True))
