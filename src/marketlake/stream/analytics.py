"""Streaming analytics: constant work per event, no recomputation over the window.

Every observation is ``(ts, price, size)``: a trade, or a bar (its close and
volume). Rolling statistics work on *buckets* (``analytics_bucket``, 1m by
default): a bucket's close is its last price, an empty bucket repeats the
previous close, and the newest, still-open bucket counts with its close so
far. With ``W = analytics_window`` and bucket closes ``c``:

``return``                ``price / c[t-1] - 1``
``volatility``            ``std(log(c).diff()[t-W+1 .. t], ddof=1) * sqrt(periods_per_year)``
                          (at least two returns)
``rolling_drawdown``      ``price / max(c[t-W+1 .. t]) - 1``
``rolling_max_drawdown``  the lowest ``rolling_drawdown`` of the last W buckets
``drawdown``              ``price / running peak - 1`` over every observation
``max_drawdown``          the lowest ``drawdown`` so far
``vwap``, ``volume``      of the current UTC day (reset at 00:00 UTC)
``bucket_volume``         volume of the current bucket
``avg_bucket_volume``     mean volume of the previous ``W-1`` buckets

These are exactly what pandas gives on the same data (``resample().last()
.ffill()``, ``rolling(W, min_periods=2).std()``, ``cummax`` …): see
``tests/stream/test_analytics.py``. Observations older than the current bucket
are ignored (counted in ``late``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from marketlake.schema import Timeframe

Array = np.ndarray[Any, Any]

DAY_US = 86_400_000_000
YEAR_S = 365 * 86_400
METRIC_NAMES = (
    "price",
    "return",
    "volatility",
    "drawdown",
    "max_drawdown",
    "rolling_drawdown",
    "rolling_max_drawdown",
    "vwap",
    "volume",
    "bucket_volume",
    "avg_bucket_volume",
)


@dataclass(slots=True)
class Observed:
    """The metrics after each observation of a batch, as arrays aligned with its events.

    What :meth:`SymbolAnalytics.update_many` returns and the alert rules read
    (NaN where a value is not defined yet); ``pct`` holds the percent change
    against the close ``k`` buckets ago for each requested ``k``.
    """

    ts: Array
    price: Array
    prev_price: Array
    ret: Array
    volatility: Array
    drawdown: Array
    rolling_drawdown: Array
    bucket_volume: Array
    avg_bucket_volume: Array
    pct: dict[int, Array] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AnalyticsConfig:
    """Window (in buckets), bucket length and annualisation of the rolling statistics."""

    window: int = 60
    bucket: str = "1m"
    periods_per_year: float | None = None
    lookback: int = 0

    @property
    def bucket_us(self) -> int:
        return Timeframe.parse(self.bucket).micros

    @property
    def annualisation(self) -> float:
        """Buckets per year: given, or 365 days of buckets (markets that never close)."""
        if self.periods_per_year is not None:
            return self.periods_per_year
        return YEAR_S / Timeframe.parse(self.bucket).seconds


class SymbolAnalytics:
    """The incremental state of one symbol; :meth:`update` is O(1) per observation."""

    __slots__ = (
        "_ann",
        "_bucket_us",
        "_closes",
        "_dds",
        "_peaks",
        "_pushes",
        "_rets",
        "_sum",
        "_sumsq",
        "_vol_sum",
        "_vols",
        "_window",
        "bucket",
        "bucket_volume",
        "close",
        "day",
        "day_pv",
        "day_volume",
        "late",
        "max_drawdown",
        "observations",
        "peak",
        "prev_close",
        "prev_price",
        "price",
        "symbol",
        "ts_us",
    )

    def __init__(self, symbol: str, config: AnalyticsConfig) -> None:
        self.symbol = symbol
        self._window = config.window
        self._bucket_us = config.bucket_us
        self._ann = config.annualisation
        self._rets: deque[float] = deque(maxlen=config.window - 1)
        self._vols: deque[float] = deque(maxlen=config.window - 1)
        self._closes: deque[float] = deque(maxlen=max(config.window, config.lookback))
        self._peaks: deque[tuple[int, float]] = deque()
        self._dds: deque[tuple[int, float]] = deque()
        self._sum = self._sumsq = self._vol_sum = 0.0
        self._pushes = 0
        self.bucket: int | None = None
        self.close = self.price = self.prev_price = math.nan
        self.prev_close: float | None = None
        self.bucket_volume = 0.0
        self.day = -1
        self.day_pv = self.day_volume = 0.0
        self.peak = -math.inf
        self.max_drawdown = 0.0
        self.ts_us = 0
        self.observations = 0
        self.late = 0

    def update(self, ts_us: int, price: float, size: float, pv: float | None = None) -> bool:
        """Take one observation; ``pv`` is its price x volume when not ``price * size``.

        Returns False (and changes nothing) for an observation older than the
        current bucket.
        """
        b = ts_us // self._bucket_us
        if b != self.bucket:
            if self.bucket is None:
                self.bucket = b
            elif b > self.bucket:
                self._advance(b)
            else:
                self.late += 1
                return False
        self.prev_price = self.price
        self.price = self.close = price
        self.ts_us = ts_us
        self.observations += 1
        if price > self.peak:
            self.peak = price
        else:
            drawdown = price / self.peak - 1.0
            if drawdown < self.max_drawdown:
                self.max_drawdown = drawdown
        self.bucket_volume += size
        day = ts_us // DAY_US
        if day != self.day:
            self.day = day
            self.day_pv = self.day_volume = 0.0
        self.day_pv += price * size if pv is None else pv
        self.day_volume += size
        return True

    def update_many(
        self,
        ts: Array,
        price: Array,
        size: Array,
        pv: Array | None = None,
        lookbacks: Iterable[int] = (),
    ) -> Observed | None:
        """Take a batch of observations at once; the same state as :meth:`update` one by one.

        The batch is cut where the bucket (or the UTC day) changes; within a
        piece the rolling state is constant, so every event's values are a few
        vector operations on its price: constant work per event, and no pass
        over the window. Returns the per-event values (None if every
        observation was late).
        """
        with np.errstate(all="ignore"):
            return self._update_many(ts, price, size, pv, tuple(lookbacks))

    def _update_many(
        self, ts: Array, price: Array, size: Array, pv: Array | None, lookbacks: tuple[int, ...]
    ) -> Observed | None:
        bucket = ts // self._bucket_us
        newest = np.maximum.accumulate(
            np.maximum(bucket, -1 if self.bucket is None else self.bucket)
        )
        late = bucket < newest
        if late.any():
            self.late += int(late.sum())
            keep = ~late
            ts, price, size, bucket = ts[keep], price[keep], size[keep], bucket[keep]
            pv = None if pv is None else pv[keep]
        n = len(ts)
        if n == 0:
            return None
        day = ts // DAY_US
        cuts = np.flatnonzero((bucket[1:] != bucket[:-1]) | (day[1:] != day[:-1])) + 1
        nan = np.full(n, np.nan)
        out = Observed(
            ts,
            price,
            np.concatenate(([self.price], price[:-1])),
            ret=nan.copy(),
            volatility=nan.copy(),
            drawdown=nan.copy(),
            rolling_drawdown=nan.copy(),
            bucket_volume=nan.copy(),
            avg_bucket_volume=nan.copy(),
            pct={k: nan.copy() for k in lookbacks},
        )
        pv = price * size if pv is None else pv
        for i, j in pairwise([0, *cuts.tolist(), n]):
            self._segment(int(bucket[i]), int(day[i]), out, slice(i, j), size[i:j], pv[i:j])
        peak = np.maximum.accumulate(np.concatenate(([self.peak], price)))[1:]
        out.drawdown = price / peak - 1.0
        self.peak = float(peak[-1])
        self.max_drawdown = min(self.max_drawdown, float(out.drawdown.min()))
        self.prev_price = float(price[-2]) if n > 1 else self.price
        self.price = self.close = float(price[-1])
        self.ts_us = int(ts[-1])
        self.observations += n
        return out

    def _segment(
        self, bucket: int, day: int, out: Observed, at: slice, size: Array, pv: Array
    ) -> None:
        """Values of a run of observations in one bucket and one day."""
        if self.bucket is None:
            self.bucket = bucket
        elif bucket != self.bucket:
            self._advance(bucket)
        if day != self.day:
            self.day = day
            self.day_pv = self.day_volume = 0.0
        p = out.price[at]
        if self.prev_close is not None:
            out.ret[at] = p / self.prev_close - 1.0
            n = len(self._rets) + 1
            if n >= 2:
                r = np.log(p / self.prev_close)
                total = self._sum + r
                var = (self._sumsq + r * r - total * total / n) / (n - 1)
                out.volatility[at] = np.sqrt(np.maximum(var, 0.0) * self._ann)
        peak = self._peaks[0][1] if self._peaks else -math.inf
        out.rolling_drawdown[at] = p / np.maximum(p, peak) - 1.0
        out.bucket_volume[at] = running_sum(self.bucket_volume, size)
        self.bucket_volume = float(out.bucket_volume[at][-1])
        if self._vols:
            out.avg_bucket_volume[at] = self._vol_sum / len(self._vols)
        for k, values in out.pct.items():
            if 1 <= k <= len(self._closes):
                values[at] = (p / self._closes[-k] - 1.0) * 100.0
        self.day_pv = float(running_sum(self.day_pv, pv)[-1])
        self.day_volume = float(running_sum(self.day_volume, size)[-1])
        self.close = float(p[-1])

    def _advance(self, new_bucket: int) -> None:
        """Close the current bucket, fill empty ones (bounded), open ``new_bucket``."""
        assert self.bucket is not None
        self._finish(self.bucket, self.close, self.bucket_volume)
        gap = new_bucket - self.bucket - 1
        if gap > 0:
            # Beyond window + lookback empty buckets every window holds only flat ones.
            fill = min(gap, self._window + (self._closes.maxlen or 0))
            for k in range(new_bucket - fill, new_bucket):
                self._finish(k, self.close, 0.0)
        self.bucket = new_bucket
        self.bucket_volume = 0.0
        oldest = new_bucket - self._window + 1
        while self._peaks and self._peaks[0][0] < oldest:
            self._peaks.popleft()
        while self._dds and self._dds[0][0] < oldest:
            self._dds.popleft()

    def _finish(self, bucket: int, close: float, volume: float) -> None:
        """Push one completed bucket into every rolling structure."""
        if self.prev_close is not None:
            self._push_return(math.log(close / self.prev_close))
        self.prev_close = close
        self._closes.append(close)
        if len(self._vols) == self._vols.maxlen:
            self._vol_sum -= self._vols[0]
        self._vols.append(volume)
        self._vol_sum += volume
        peaks = self._peaks
        while peaks and peaks[-1][1] <= close:
            peaks.pop()
        peaks.append((bucket, close))
        while peaks[0][0] <= bucket - self._window:
            peaks.popleft()
        drawdown = close / peaks[0][1] - 1.0
        dds = self._dds
        while dds and dds[-1][1] >= drawdown:
            dds.pop()
        dds.append((bucket, drawdown))

    def _push_return(self, r: float) -> None:
        rets = self._rets
        if rets.maxlen == 0:
            return
        if len(rets) == rets.maxlen:
            old = rets[0]
            self._sum -= old
            self._sumsq -= old * old
        rets.append(r)
        self._sum += r
        self._sumsq += r * r
        self._pushes += 1
        if self._pushes % self._window == 0:  # re-sum now and then: no drift, O(1) amortised
            self._sum = math.fsum(rets)
            self._sumsq = math.fsum(x * x for x in rets)

    # -- values (read on demand, each O(1)) ------------------------------------------

    @property
    def ret(self) -> float | None:
        """Return of the current bucket so far."""
        if self.prev_close is None:
            return None
        return self.price / self.prev_close - 1.0

    @property
    def volatility(self) -> float | None:
        """Annualised standard deviation of the bucket log returns in the window."""
        if self.prev_close is None:
            return None
        r = math.log(self.price / self.prev_close)
        n = len(self._rets) + 1
        if n < 2:
            return None
        total = self._sum + r
        var = (self._sumsq + r * r - total * total / n) / (n - 1)
        return math.sqrt(max(var, 0.0) * self._ann)

    @property
    def drawdown(self) -> float:
        return self.price / self.peak - 1.0

    @property
    def rolling_drawdown(self) -> float:
        peak = self._peaks[0][1] if self._peaks else -math.inf
        return self.price / max(peak, self.price) - 1.0

    @property
    def rolling_max_drawdown(self) -> float:
        current = self.rolling_drawdown
        return min(self._dds[0][1], current) if self._dds else current

    @property
    def vwap(self) -> float | None:
        return self.day_pv / self.day_volume if self.day_volume > 0 else None

    @property
    def avg_bucket_volume(self) -> float | None:
        return self._vol_sum / len(self._vols) if self._vols else None

    def pct_change(self, buckets: int) -> float | None:
        """Percent change of the price against the close ``buckets`` buckets ago."""
        closes = self._closes
        if buckets < 1 or len(closes) < buckets:
            return None
        return (self.price / closes[-buckets] - 1.0) * 100.0

    def ensure_lookback(self, buckets: int) -> None:
        """Keep at least ``buckets`` closes (for percent-change alerts)."""
        if (self._closes.maxlen or 0) < buckets:
            self._closes = deque(self._closes, maxlen=buckets)

    def values(self) -> dict[str, float | None]:
        """Every metric of :data:`METRIC_NAMES` (None where not yet defined)."""
        return {
            "price": self.price,
            "return": self.ret,
            "volatility": self.volatility,
            "drawdown": self.drawdown,
            "max_drawdown": self.max_drawdown,
            "rolling_drawdown": self.rolling_drawdown,
            "rolling_max_drawdown": self.rolling_max_drawdown,
            "vwap": self.vwap,
            "volume": self.day_volume,
            "bucket_volume": self.bucket_volume,
            "avg_bucket_volume": self.avg_bucket_volume,
        }


class Analytics:
    """The per-symbol states of one worker."""

    def __init__(self, config: AnalyticsConfig) -> None:
        self.config = config
        self.lookback = config.lookback
        self._states: dict[str, SymbolAnalytics] = {}

    def get(self, symbol: str) -> SymbolAnalytics:
        state = self._states.get(symbol)
        if state is None:
            state = self._states[symbol] = SymbolAnalytics(symbol, self.config)
            state.ensure_lookback(self.lookback)
        return state

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._states

    def symbols(self) -> list[str]:
        return sorted(self._states)

    def drop(self, symbol: str) -> None:
        self._states.pop(symbol, None)

    def ensure_lookback(self, buckets: int) -> None:
        """Every state (now and later) keeps at least ``buckets`` closes."""
        self.lookback = max(self.lookback, buckets)
        for state in self._states.values():
            state.ensure_lookback(buckets)


def running_sum(start: float, values: Array) -> Array:
    """``start + values[0]``, ``+ values[1]`` … added one at a time (as :meth:`update` does)."""
    return np.cumsum(np.concatenate(([start], values)))[1:]
