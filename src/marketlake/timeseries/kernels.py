"""Compiled loops (Numba) over bar columns, for the few passes NumPy cannot fuse.

Each kernel is an ordinary Python function compiled with ``numba.njit``; the
plain function stays available (``_name``) and the tests check that both agree.
They read whole columns once and write into arrays allocated by their NumPy-side
wrappers, so no Python object is made per row.

- :func:`bucket_groups` and :func:`reduce_bars`: the roll-up of bars into buckets,
  with the compensated (Kahan) sums that pandas uses, so roll-ups match pandas bit
  for bit;
- :func:`row_flags`, :func:`stale_runs` and :func:`price_jumps`: the row and series
  rules of :mod:`marketlake.quality.rules`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from marketlake.timeseries.columns import Groups

Array = np.ndarray[Any, Any]
_jit = numba.njit(cache=True, nogil=True)


def bucket_groups(ts: Array, run_starts: Array, step: int, origin: int = 0) -> Array:
    """Start rows of the groups of rows sorted by time within each run that share a
    bucket ``[origin + k * step, origin + (k + 1) * step)``; a run always starts a group."""
    out = np.empty(len(ts), np.int64)
    count = _bucket_kernel(ts, run_starts, step, origin, out)
    return out[:count].copy()


def _bucket_starts(ts: Array, run_starts: Array, step: int, origin: int, out: Array) -> int:
    """The loop behind :func:`bucket_groups`: one comparison per row, a division per group."""
    count, run, edge = 0, 0, 0
    n_runs = len(run_starts)
    for i in range(len(ts)):
        new_run = run < n_runs and i == run_starts[run]
        if new_run:
            run += 1
        if new_run or ts[i] >= edge:
            out[count] = i
            count += 1
            edge = ((ts[i] - origin) // step + 1) * step + origin
    return count


_bucket_kernel = _jit(_bucket_starts)


@dataclass(frozen=True, slots=True)
class BarSums:
    """The reduced values of each group of bars (see :func:`reduce_bars`)."""

    open: Array
    high: Array
    low: Array
    close: Array
    volume: Array
    price_volume: Array
    trades: Array
    trades_missing: Array


def reduce_bars(
    groups: Groups,
    open_: Array,
    high: Array,
    low: Array,
    close: Array,
    volume: Array,
    vwap: Array,
    trades: Array,
    trades_valid: Array | None,
) -> BarSums:
    """First open, max high, min low, last close, and compensated sums of volume and
    vwap x volume (a NaN vwap counts at the close) of every group, in one compiled pass.

    NaN values are skipped as pandas skips them; sums are Kahan sums in row order,
    exactly as pandas' ``groupby().sum()`` computes them, so results match it bit
    for bit. ``trades_missing`` is true for a group holding a bar without a count.
    """
    count = len(groups)
    out = BarSums(
        np.empty(count),
        np.empty(count),
        np.empty(count),
        np.empty(count),
        np.empty(count),
        np.empty(count),
        np.zeros(count, np.int64),
        np.zeros(count, np.bool_),
    )
    valid = trades_valid if trades_valid is not None else np.ones(0, np.bool_)
    _reduce_kernel(
        groups.starts,
        groups.ends,
        open_,
        high,
        low,
        close,
        volume,
        vwap,
        trades,
        valid,
        trades_valid is not None,
        out.open,
        out.high,
        out.low,
        out.close,
        out.volume,
        out.price_volume,
        out.trades,
        out.trades_missing,
    )
    return out


def _reduce_groups(
    starts: Array,
    ends: Array,
    open_: Array,
    high: Array,
    low: Array,
    close: Array,
    volume: Array,
    vwap: Array,
    trades: Array,
    trades_valid: Array,
    check_trades: bool,
    o_out: Array,
    h_out: Array,
    l_out: Array,
    c_out: Array,
    v_out: Array,
    pv_out: Array,
    t_out: Array,
    t_missing: Array,
) -> None:
    """The loop behind :func:`reduce_bars` (compiled by Numba; runs as Python in tests)."""
    nan = np.nan
    for g in range(len(starts)):
        o, h, lo, c = nan, nan, nan, nan
        vol, vol_comp, pv, pv_comp = 0.0, 0.0, 0.0, 0.0
        count, missing = 0, False
        for i in range(starts[g], ends[g]):
            x = open_[i]
            if o != o:  # the first value that is not NaN
                o = x
            x = high[i]
            if x == x and (h != h or x > h):
                h = x
            x = low[i]
            if x == x and (lo != lo or x < lo):
                lo = x
            x = close[i]
            if x == x:
                c = x
            v = volume[i]
            if v == v:  # Kahan step exactly as pandas' group_sum
                y = v - vol_comp
                t = vol + y
                vol_comp = t - vol - y
                if vol_comp != vol_comp:
                    vol_comp = 0.0
                vol = t
            w = vwap[i]
            if w != w:
                w = close[i]
            x = w * v
            if x == x:
                y = x - pv_comp
                t = pv + y
                pv_comp = t - pv - y
                if pv_comp != pv_comp:
                    pv_comp = 0.0
                pv = t
            if check_trades and not trades_valid[i]:
                missing = True
            else:
                count += trades[i]
        o_out[g], h_out[g], l_out[g], c_out[g] = o, h, lo, c
        v_out[g], pv_out[g], t_out[g], t_missing[g] = vol, pv, count, missing


_reduce_kernel = _jit(_reduce_groups)


# -- validation ------------------------------------------------------------------------

PRICE, OHLC, VOLUME, MISALIGNED, REPEATED = 1, 2, 4, 8, 16
"""Bits of :func:`row_flags`: a price not positive and finite; low/high not around
open and close; volume not finite and >= 0; a time that is no bar start; a second
bar at the same time."""


def row_flags(
    open_: Array,
    high: Array,
    low: Array,
    close: Array,
    volume: Array,
    ts: Array,
    starts: Array,
    ends: Array,
    steps: Array,
    origins: Array,
) -> tuple[Array, int]:
    """The row-rule bits of every row, and how many rows have any.

    Series ``k`` is rows ``starts[k]:ends[k]`` in time order, with bars starting at
    ``origins[k] + j * steps[k]`` (a step of 0 skips the alignment check).
    """
    flags = np.empty(len(ts), np.uint8)
    count = _row_kernel(open_, high, low, close, volume, ts, starts, ends, steps, origins, flags)
    return flags, int(count)


def _row_checks(
    open_: Array,
    high: Array,
    low: Array,
    close: Array,
    volume: Array,
    ts: Array,
    starts: Array,
    ends: Array,
    steps: Array,
    origins: Array,
    out: Array,
) -> int:
    """The loop behind :func:`row_flags`."""
    count = 0
    for k in range(len(starts)):
        step, origin = steps[k], origins[k]
        following = -1  # the bar start after the last aligned bar: most bars are that one
        for i in range(starts[k], ends[k]):
            o, h, lo, c = open_[i], high[i], low[i], close[i]
            flag = 0
            if not (lo > 0 and h < np.inf and lo <= o and o <= h and lo <= c and c <= h):
                finite = 0 < o < np.inf and 0 < h < np.inf and 0 < lo < np.inf and 0 < c < np.inf
                flag = OHLC if finite else PRICE
            v = volume[i]
            if not (0 <= v < np.inf):
                flag |= VOLUME
            t = ts[i]
            if step > 0:
                if t == following or (t - origin) % step == 0:
                    following = t + step
                else:
                    flag |= MISALIGNED
            if i > starts[k] and t == ts[i - 1]:
                flag |= REPEATED
            out[i] = flag
            if flag:
                count += 1
    return count


_row_kernel = _jit(_row_checks)


def stale_runs(close: Array, volume: Array, min_bars: int) -> tuple[Array, Array]:
    """First and last bar of each run of at least ``min_bars`` equal closes, volume > 0."""
    first, last = (
        np.empty(len(close) // max(min_bars, 1) + 1, np.int64),
        np.empty(len(close) // max(min_bars, 1) + 1, np.int64),
    )
    count = _stale_kernel(close, volume, min_bars, first, last)
    return first[:count].copy(), last[:count].copy()


def _stale_scan(close: Array, volume: Array, min_bars: int, first: Array, last: Array) -> int:
    """The loop behind :func:`stale_runs`."""
    count, start, n = 0, 0, len(close)
    for i in range(1, n + 1):
        same = i < n and close[i] == close[i - 1] and volume[i] > 0 and volume[i - 1] > 0
        if not same:
            if i - start >= min_bars:
                first[count], last[count] = start, i - 1
                count += 1
            start = i
    return count


_stale_kernel = _jit(_stale_scan)


def price_jumps(
    open_: Array,
    close: Array,
    ts: Array,
    step: int,
    block: int,
    upper: Array,
    lower: Array,
    jump: float,
) -> tuple[Array, Array]:
    """Rows ``i`` (from 1) whose gap ``close[i-1] / open[i]`` exceeds ``jump`` either way
    (split candidates), and rows whose return ``close[i] / close[i-1]`` leaves
    ``[lower[b], upper[b]]`` of its block ``b = (i - 1) // block`` (outliers). With
    ``step > 0`` a return counts only between bars ``step`` apart."""
    splits, outliers = np.empty(len(ts), np.int64), np.empty(len(ts), np.int64)
    counts = np.zeros(2, np.int64)
    _jump_kernel(open_, close, ts, step, block, upper, lower, jump, splits, outliers, counts)
    return splits[: counts[0]].copy(), outliers[: counts[1]].copy()


def _jump_scan(
    open_: Array,
    close: Array,
    ts: Array,
    step: int,
    block: int,
    upper: Array,
    lower: Array,
    jump: float,
    splits: Array,
    outliers: Array,
    counts: Array,
) -> None:
    """The loop behind :func:`price_jumps`."""
    n_split, n_out = 0, 0
    for i in range(1, len(ts)):  # prices are positive here: compare products, not ratios
        before, o, c = close[i - 1], open_[i], close[i]
        if before > jump * o or before * jump < o:
            splits[n_split] = i
            n_split += 1
        if step > 0 and ts[i] - ts[i - 1] != step:
            continue
        b = (i - 1) // block
        if c > upper[b] * before or c < lower[b] * before:
            outliers[n_out] = i
            n_out += 1
    counts[0], counts[1] = n_split, n_out


_jump_kernel = _jit(_jump_scan)
