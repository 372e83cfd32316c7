"""Bars for backtests: from the store (rolled up on the fly when needed) or synthetic.

A backtest works on :class:`Bars`, one symbol's OHLCV columns as NumPy arrays.
They are checked once on the way in (finite, positive prices, increasing
times), so strategies and the engine never meet a NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from marketlake.errors import DataError, InputError, NotFoundError
from marketlake.schema import Timeframe, from_epoch_us, normalize_symbol, to_epoch_us

if TYPE_CHECKING:
    from marketlake.store import Store

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]
PRICE_COLUMNS = ("open", "high", "low", "close")


MEMO_BYTES = 64 * 1024 * 1024


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, tuple | list):
        return sum(_nbytes(v) for v in value)
    return int(getattr(value, "nbytes", 0) or 0)


@dataclass(frozen=True, eq=False)
class Bars:
    """One symbol's bars: times in epoch microseconds (bar open, UTC) and OHLCV arrays.

    ``memo`` caches values derived from these bars (indicators), so a parameter
    sweep computes each moving average once per process, not once per run.
    """

    symbol: str
    ts: IntArray
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    _cache: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)
    _sizes: dict[tuple[Any, ...], int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ts)

    def memo(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """``compute()`` once per ``key`` for these bars, while the cache holds it.

        The cache keeps at most :data:`MEMO_BYTES` of arrays, dropping the least
        recently used first: a sweep over thousands of distinct windows keeps its
        memory flat instead of caching every moving average it ever computed.
        """
        cache, sizes = self._cache, self._sizes
        if key in cache:
            value = cache.pop(key)  # re-inserted: the dict's order is the recency order
            cache[key] = value
            return value
        value = compute()
        cache[key] = value
        sizes[key] = _nbytes(value)
        total = sum(sizes.values())
        for old in list(cache):
            if total <= MEMO_BYTES:
                break
            if old != key:
                total -= sizes.pop(old, 0)
                del cache[old]
        return value

    def check(self) -> Bars:
        """Raise :class:`DataError` on NaN or non-positive prices or unordered times."""
        self.memo(("checked",), self._check)
        return self

    def _check(self) -> bool:
        for name in PRICE_COLUMNS:
            values = getattr(self, name)
            if len(values) and values.min() > 0 and values.max() < np.inf:  # NaN fails min > 0
                continue
            bad = ~(np.isfinite(values) & (values > 0))
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(
                    f"{self.symbol}: {name} is {values[i]} at {self.time(i)} "
                    f"({int(bad.sum())} such bars); backtests need finite positive prices — "
                    "repair or delete those bars (see `marketlake validate`)"
                )
        if len(self.ts) > 1 and not bool(np.all(self.ts[1:] > self.ts[:-1])):
            i = int(np.argmin(self.ts[1:] > self.ts[:-1])) + 1
            raise DataError(f"{self.symbol}: bar times are not increasing at {self.time(i)}")
        return True

    def time(self, i: int) -> str:
        """The ISO time of bar ``i``."""
        return from_epoch_us(int(self.ts[i])).isoformat().replace("+00:00", "Z")


def split_symbols(table: pa.Table) -> list[Bars]:
    """Canonical bars (ordered by symbol, ts) as one :class:`Bars` per symbol, by symbol."""
    if table.num_rows == 0:
        return []
    symbols = table.column("symbol").combine_chunks().dictionary_encode()
    codes = symbols.indices.to_numpy(zero_copy_only=False)
    names = symbols.dictionary.to_pylist()
    columns: dict[str, Any] = {
        c: np.ascontiguousarray(table.column(c).to_numpy(), dtype=np.float64)
        for c in (*PRICE_COLUMNS, "volume")
    }
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    if len(names) == 1:
        return [Bars(names[0], ts, **columns)]
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    out = []
    for code in sorted(range(len(names)), key=lambda c: names[c]):
        rows = order[bounds[code] : bounds[code + 1]]
        out.append(Bars(names[code], ts[rows], **{c: v[rows] for c, v in columns.items()}))
    return out


def no_bars(symbol: str) -> Bars:
    """No bars of ``symbol`` (a range with no session, for instance)."""
    nothing = np.empty(0)
    return Bars(symbol, np.empty(0, dtype=np.int64), nothing, nothing, nothing, nothing, nothing)


def synthetic_bars(
    symbols: Sequence[str],
    timeframe: str | Timeframe,
    start: datetime,
    end: datetime,
    seed: int = 7,
) -> pa.Table:
    """Deterministic synthetic bars (the offline mode of ``run-simple`` and the benchmarks)."""
    from marketlake.providers.synthetic import generate_bars

    return generate_bars(list(symbols), timeframe, start, end, seed)


def load_bars(
    store: Store,
    symbols: Sequence[str],
    timeframe: str | Timeframe,
    start: datetime | None,
    end: datetime | None,
    *,
    adjusted: bool = False,
) -> list[Bars]:
    """Stored bars of ``symbols`` in ``[start, end)``, rolled up from a finer timeframe if needed.

    ``adjusted``: split- and dividend-adjusted with the stored corporate actions (a split
    then moves no price and no position), as ``marketlake bars --adjusted``.

    A symbol without bars at ``timeframe`` in the range is rolled up on the fly
    (with :func:`marketlake.timeseries.aggregate.rollup`) from the coarsest stored
    timeframe that divides ``timeframe``. Raises :class:`NotFoundError` when
    neither exists, saying what to ingest.
    """
    tf = Timeframe.parse(timeframe)
    out = []
    for symbol in dict.fromkeys(normalize_symbol(s) for s in symbols):
        table = store.read_bars(symbol, tf, start, end).table
        if table.num_rows == 0:
            table = _rolled_up(store, symbol, tf, start, end)
        if adjusted and table.num_rows:
            from marketlake.timeseries.adjust import adjust_table

            table = adjust_table(store, symbol, tf, table)
        out.append(_as_bars(symbol, table))
    return out


HOLE_DAYS = 7
"""A stretch without bars longer than this (and than 5 bars of the timeframe) is a hole:
longer than any normal closure (a long weekend with a holiday is under 4 days; the
longest exchange closures, e.g. September 2001, under 7)."""


def large_holes(bars: Bars, timeframe: str | Timeframe) -> list[str]:
    """One line per stretch without bars far longer than the timeframe's closures."""
    tf = Timeframe.parse(timeframe)
    step = 31 * 86400 * 1_000_000 if tf.is_calendar else tf.micros
    limit = max(5 * step, HOLE_DAYS * 86400 * 1_000_000)
    if len(bars) < 2:
        return []
    gaps = np.diff(bars.ts)
    out = []
    for i in np.flatnonzero(gaps > limit).tolist():
        days = gaps[i] / (86400 * 1_000_000)
        out.append(
            f"{bars.symbol} {tf}: no bars from {bars.time(i)} to {bars.time(i + 1)} "
            f"({days:,.0f} days); positions are held across it and drawdown durations "
            "include it"
        )
    return out


def check_holes(bars: Sequence[Bars], timeframe: str | Timeframe, on_hole: str) -> list[str]:
    """The holes of ``bars``; with ``on_hole="refuse"`` the first one is a DataError."""
    if on_hole not in ("report", "refuse"):
        raise InputError(f"--on-hole {on_hole!r} must be report or refuse", param="on_hole")
    found = [line for b in bars for line in large_holes(b, timeframe)]
    if found and on_hole == "refuse":
        raise DataError(
            f"{found[0]}; backtest a range without it (--start/--end), fill it "
            "(marketlake repair), or pass --on-hole report",
            problems=found,
        )
    return found


def _as_bars(symbol: str, table: pa.Table) -> Bars:
    """One symbol's bars, ordered by time, as arrays."""
    columns: dict[str, Any] = {
        c: np.ascontiguousarray(table.column(c).to_numpy(), dtype=np.float64)
        for c in (*PRICE_COLUMNS, "volume")
    }
    return Bars(symbol, table.column("ts").cast(pa.int64()).to_numpy(), **columns)


def _rolled_up(
    store: Store, symbol: str, tf: Timeframe, start: datetime | None, end: datetime | None
) -> pa.Table:
    from marketlake.timeseries.aggregate import rollup

    stored = store.stored_timeframes(symbol)
    sources = sorted(
        (Timeframe.parse(t) for t in stored if divides(Timeframe.parse(t), tf)),
        key=lambda t: t.seconds,
        reverse=True,
    )
    for source in sources:
        lo = tf.floor(start) if start is not None else None
        hi = tf.next_start(from_epoch_us(to_epoch_us(end) - 1)) if end is not None else None
        finer = store.read_bars(symbol, source, lo, hi).table
        if finer.num_rows == 0:
            continue
        rolled = rollup(finer, tf)
        ts = rolled.column("ts").cast(pa.int64()).to_numpy()
        keep = np.ones(len(ts), dtype=bool)
        if start is not None:
            keep &= ts >= to_epoch_us(start)
        if end is not None:
            keep &= ts < to_epoch_us(end)
        if keep.any():
            return rolled.filter(pa.array(keep))
    have = ", ".join(sorted(set(stored))) or "none"
    raise NotFoundError(
        f"no {symbol} bars at {tf} (or a finer timeframe to roll up) in the range; stored "
        f"timeframes of {symbol}: {have}. Ingest some first, e.g. `marketlake ingest "
        f"synthetic {symbol} -t 1m --start 2024-01-02 --end 2024-02-01`"
    )


def divides(source: Timeframe, target: Timeframe) -> bool:
    """True when bars of ``source`` roll up exactly into bars of ``target``."""
    if source.is_calendar:
        return False
    if target.is_calendar:
        return source.seconds <= 86400 and 86400 % source.seconds == 0
    return source.seconds < target.seconds and target.seconds % source.seconds == 0
