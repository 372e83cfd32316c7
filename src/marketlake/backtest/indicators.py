"""Vectorised indicators on float64 NumPy arrays, matching TA-Lib's definitions.

Each returns an array as long as its input, NaN where the window is not yet
full (TA-Lib's "lookback"). Inputs must be free of NaNs; the engine checks
that before any strategy runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]
_BLOCK = 1 << 13


@dataclass(frozen=True)
class PrefixSums:
    """Running sums of ``values - shift`` that restart every ``block`` values.

    Restarting keeps rounding local: a plain cumulative sum over a million
    prices loses about two more digits. One table serves every window up to
    ``block``, so a strategy with two moving averages (or a sweep with
    twenty) sums the prices once.
    """

    table: FloatArray  # shape (rows, block)
    length: int
    shift: float

    @property
    def block(self) -> int:
        return int(self.table.shape[1])


def prefix_sums(values: FloatArray, block: int = _BLOCK) -> PrefixSums:
    """The :class:`PrefixSums` of ``values``, shifted by its first value."""
    n = len(values)
    shift = float(values[0]) if n else 0.0
    rows = max(-(-n // block), 1)
    flat = np.empty(rows * block)
    np.subtract(values, shift, out=flat[:n])
    flat[n:] = 0.0
    table = flat.reshape(rows, block)
    np.cumsum(table, axis=1, out=table)
    return PrefixSums(table, n, shift)


def window_sums(prefix: PrefixSums, window: int) -> FloatArray:
    """Sum of ``values - shift`` over each trailing ``window`` (NaN before the first full one)."""
    table, block = prefix.table, prefix.block
    out = np.empty_like(table)
    np.subtract(table[:, window:], table[:, :-window], out=out[:, window:])
    # a window reaching into the previous block: the rest of that block plus this prefix
    np.add(table[1:, :window], table[:-1, block - 1 : block], out=out[1:, :window])
    out[1:, :window] -= table[:-1, block - window :]
    out[0, : window - 1] = np.nan
    out[0, window - 1] = table[0, window - 1]
    return out.reshape(-1)[: prefix.length]


def sma(values: FloatArray, window: int, prefix: PrefixSums | None = None) -> FloatArray:
    """Simple moving average (TA-Lib ``SMA``); ``prefix`` reuses running sums of ``values``."""
    if len(values) < window:
        return np.full(len(values), np.nan)
    if prefix is None or prefix.block < window:
        prefix = prefix_sums(values, max(_BLOCK, window))
    out = window_sums(prefix, window)
    out *= 1.0 / window
    out += prefix.shift
    return out


def rolling_std(values: FloatArray, window: int) -> FloatArray:
    """Population standard deviation of each trailing window (TA-Lib ``STDDEV``)."""
    import polars as pl

    if len(values) < window:
        return np.full(len(values), np.nan)
    # polars' rolling variance is numerically careful; sums of squares are not
    out = pl.Series(values).rolling_std(window, ddof=0).to_numpy()
    return np.asarray(out, dtype=np.float64)


def bollinger(
    values: FloatArray, window: int, k: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(lower, middle, upper) bands: SMA ∓ ``k`` population deviations (TA-Lib ``BBANDS``)."""
    middle = sma(values, window)
    width = k * rolling_std(values, window)
    return middle - width, middle, middle + width


def linear_recurrence(x: FloatArray, decay: float) -> FloatArray:
    """``y[t] = decay * y[t-1] + x[t]`` with ``y[-1] = 0``, for ``0 <= decay < 1``.

    A log-depth scan (Hillis-Steele) in whole-array NumPy steps; it stops
    once ``decay**step`` no longer changes a float64.
    """
    y = np.array(x, dtype=np.float64)
    step, factor = 1, decay
    while step < len(y) and factor > 1e-18:
        y[step:] += factor * y[:-step]
        step *= 2
        factor *= factor
    return y


def rsi(values: FloatArray, period: int) -> FloatArray:
    """Relative strength index with Wilder's smoothing (TA-Lib ``RSI``)."""
    n = len(values)
    out = np.full(n, np.nan)
    if n <= period:
        return out
    change = np.diff(values)
    gain = np.maximum(change, 0.0)
    loss = np.maximum(-change, 0.0)
    averages = []
    for series in (gain, loss):
        x = series[period - 1 :] / period  # x[0] seeds with the mean of the first period
        x[0] = series[:period].mean()
        averages.append(linear_recurrence(x, (period - 1) / period))
    avg_gain, avg_loss = averages
    total = avg_gain + avg_loss
    with np.errstate(invalid="ignore", divide="ignore"):
        out[period:] = np.where(total > 0, 100.0 * avg_gain / total, 0.0)
    return out


def crossings(a: FloatArray, b: FloatArray) -> tuple[BoolArray, BoolArray]:
    """(crossed above, crossed below): :func:`crossed_above` and :func:`crossed_below` at once."""
    with np.errstate(invalid="ignore"):
        above, below = a > b, a < b
    up = np.zeros(len(a), dtype=bool)
    down = np.zeros(len(a), dtype=bool)
    np.logical_and(below[:-1], above[1:], out=up[1:])
    np.logical_and(above[:-1], below[1:], out=down[1:])
    return up, down


def crossed_above(a: FloatArray, b: FloatArray) -> BoolArray:
    """True at bars where ``a`` went from below ``b`` to above it (False next to NaN)."""
    out = np.zeros(len(a), dtype=bool)
    with np.errstate(invalid="ignore"):
        np.logical_and(a[:-1] < b[:-1], a[1:] > b[1:], out=out[1:])
    return out


def crossed_below(a: FloatArray, b: FloatArray) -> BoolArray:
    """True at bars where ``a`` went from above ``b`` to below it."""
    return crossed_above(b, a)
