"""Timeframe roll-ups: exact, session-aware, incremental.

A roll-up bar takes the first open, the highest high, the lowest low, the last
close, the summed volume and trade count, and the volume-weighted vwap (a bar
without vwap counts at its close) of the bars in its bucket.

- **Intraday buckets** (``5m``, ``1h``, ``4h`` …) are floors of the UTC epoch.
- **Daily bars follow the instrument's sessions** (:mod:`marketlake.timeseries.sessions`): a US
  stock's ``1d`` bar covers 09:30-16:00 New York whatever the DST offset, and is
  labelled with its trading date at 00:00 UTC; bars outside every session stay
  out of it. Weekly bars are labelled with the Monday, monthly with the first day,
  ``Nd`` with epoch-aligned N-day blocks of trading dates.
- **Exact**: sums use the compensated summation of pandas in row order
  (:func:`marketlake.timeseries.kernels.reduce_bars`), so a roll-up equals pandas ``resample``
  bit for bit; the property tests hold it to that.
- **Fast**: one pass of NumPy reductions over rows sorted by (symbol, ts), the
  order the store returns; unsorted input is sorted first (stably).
- **Incremental**: :func:`aggregate_store` recomputes only the buckets holding
  source bars in a range, which ingest calls after every write; the still-forming
  last bucket of a symbol is reported in :attr:`Rollup.partial`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from marketlake.errors import InputError
from marketlake.schema import (
    BAR_SCHEMA,
    TS_TYPE,
    Instrument,
    Timeframe,
    constant_column,
    default_instrument,
    from_epoch_us,
    to_epoch_us,
    utcnow,
)
from marketlake.timeseries.columns import (
    Groups,
    SortedBars,
    float_values,
    int64_values,
    string_runs,
    valid_mask,
)
from marketlake.timeseries.kernels import bucket_groups, reduce_bars
from marketlake.timeseries.sessions import DAY_US, Sessions, sessions_for

Array = np.ndarray[Any, Any]
Instruments = Mapping[str, Instrument]


@dataclass(frozen=True, slots=True)
class Rollup:
    """Rolled-up bars, the open time of the first and last source bar of each, and the
    still-forming (partial) last bar of each symbol, by symbol."""

    table: pa.Table
    first_ts: Array
    last_ts: Array
    partial: dict[str, datetime] = field(default_factory=dict)


def check_rollup(source: str | Timeframe, target: str | Timeframe) -> tuple[Timeframe, Timeframe]:
    """Parse both timeframes; raise :class:`InputError` unless ``target`` can be built
    from ``source`` (coarser, and a whole multiple of it)."""
    src, dst = Timeframe.parse(source), Timeframe.parse(target)
    if dst.is_intraday:
        ok = src.is_intraday and dst.micros > src.micros and dst.micros % src.micros == 0
    elif src.is_intraday:
        ok = True
    elif dst.unit == "d":
        ok = src.unit == "d" and dst.count > src.count and dst.count % src.count == 0
    else:
        ok = str(src) == "1d"
    if not ok:
        raise InputError(
            f"cannot roll {src} bars up to {dst}: the target must be coarser and a whole "
            f"multiple of the source (e.g. 1m → 5m, 1h, 1d; 1d → 1w, 1mo)",
            param="to",
        )
    return src, dst


def rollup(
    bars: pa.Table, to: str | Timeframe, *, instruments: Instruments | None = None
) -> pa.Table:
    """Roll canonical bars up to the coarser timeframe ``to`` (see the module docstring)."""
    return rollup_bars(bars, to, instruments=instruments).table


def rollup_bars(
    bars: pa.Table,
    to: str | Timeframe,
    *,
    instruments: Instruments | None = None,
    now: datetime | None = None,
) -> Rollup:
    """Roll ``bars`` up to ``to`` and say which output bars are still forming at ``now``.

    ``instruments`` maps symbols to their :class:`Instrument` (for sessions and
    timezone); unknown symbols get :func:`default_instrument`.
    """
    if bars.num_rows == 0:
        return Rollup(BAR_SCHEMA.empty_table(), np.empty(0, np.int64), np.empty(0, np.int64))
    source = _source_timeframe(bars)
    src, dst = check_rollup(source, to)
    frame = SortedBars.of(bars)
    known = instruments or {}
    lookup = {s: known.get(s) or default_instrument(s) for s in frame.symbols}
    if src.is_intraday and not dst.is_intraday:
        frame = _inside_sessions(frame, lookup)
        if len(frame.ts) == 0:
            return Rollup(BAR_SCHEMA.empty_table(), np.empty(0, np.int64), np.empty(0, np.int64))
        groups, labels, runs = _session_groups(frame, dst, lookup)
    else:
        groups, labels, runs = _label_groups(frame, dst)
    table = _aggregate(frame, groups, labels, runs, dst)
    partial = _partial(
        frame,
        groups,
        labels,
        runs,
        dst,
        lookup,
        to_epoch_us(now) if now is not None else to_epoch_us(utcnow()),
    )
    first_ts, last_ts = frame.ts[groups.starts], frame.ts[groups.ends - 1]
    if frame.symbols != sorted(frame.symbols):  # symbol runs in another order: sort the output
        rank = np.argsort(np.argsort(np.asarray(frame.symbols, dtype=object)))
        order = np.argsort(rank[runs], kind="stable")
        table, first_ts, last_ts = table.take(pa.array(order)), first_ts[order], last_ts[order]
    return Rollup(table, first_ts, last_ts, partial)


def _source_timeframe(bars: pa.Table) -> str:
    _, values = string_runs(bars.column("timeframe"))
    if len(set(values)) != 1:
        raise InputError(
            f"bars hold several timeframes ({', '.join(sorted(set(values)))}); "
            "roll up one timeframe at a time",
            param="timeframe",
        )
    return values[0]


def _inside_sessions(bars: SortedBars, instruments: Instruments) -> SortedBars:
    """The same bars without rows outside every trading session of their symbol."""
    keep: list[Array] = []
    for k, symbol in enumerate(bars.symbols):
        lo, hi = int(bars.starts[k]), int(bars.ends[k])
        sessions = _sessions(instruments[symbol], bars.ts[lo:hi])
        first, end = _session_rows(sessions, bars.ts[lo:hi])
        if int((end - first).sum()) != hi - lo:
            keep.append(lo + _rows_in(first, end, hi - lo))
        else:
            keep.append(np.arange(lo, hi))
    rows = np.concatenate(keep) if keep else np.empty(0, np.int64)
    return bars if len(rows) == len(bars.ts) else bars.take(rows)


def _sessions(instrument: Instrument, ts: Array) -> Sessions:
    return sessions_for(instrument, int(ts[0]), int(ts[-1]) + 1)


def _session_rows(sessions: Sessions, ts: Array) -> tuple[Array, Array]:
    """Per session, the first row at or after its open and the first row at or after its close."""
    return (
        np.searchsorted(ts, sessions.opens, side="left"),
        np.searchsorted(ts, sessions.closes, side="left"),
    )


def _rows_in(first: Array, end: Array, n: int) -> Array:
    """Row numbers covered by the half-open ranges ``[first, end)``."""
    depth = np.cumsum(np.bincount(first, minlength=n + 1) - np.bincount(end, minlength=n + 1))
    return np.flatnonzero(depth[:n] > 0)


def _bucket_ids(ts: Array, tf: Timeframe) -> Array:
    """An integer per row that changes exactly where the bucket of ``tf`` changes."""
    if tf.unit == "mo":
        return ts.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64)
    if tf.unit == "w":
        return (ts - 4 * DAY_US) // tf.micros  # weeks start on Monday 1970-01-05
    return ts // tf.micros


def _bucket_start(ids: Array, tf: Timeframe) -> Array:
    if tf.unit == "mo":
        return ids.astype("datetime64[M]").astype("datetime64[us]").astype(np.int64)
    if tf.unit == "w":
        return ids * tf.micros + 4 * DAY_US
    return ids * tf.micros


def _label_groups(frame: SortedBars, tf: Timeframe) -> tuple[Groups, Array, Array]:
    """Groups by bucket of the timestamp itself (intraday targets, and daily sources)."""
    n = len(frame.ts)
    if tf.unit == "mo":
        ids = _bucket_ids(frame.ts, tf)
        change = ids[1:] != ids[:-1]
        change[frame.starts[1:] - 1] = True
        starts = np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)
    else:
        origin = 4 * DAY_US if tf.unit == "w" else 0
        starts = bucket_groups(frame.ts, frame.starts, tf.micros, origin)
    ends = np.append(starts[1:], n)
    labels = _bucket_start(_bucket_ids(frame.ts[starts], tf), tf)
    return Groups(starts, ends), labels, frame.series_of(starts)


def _session_groups(
    frame: SortedBars, tf: Timeframe, instruments: Instruments
) -> tuple[Groups, Array, Array]:
    """Groups of whole sessions by the bucket of their trading date (rows all in sessions)."""
    parts: list[tuple[Array, Array, Array, Array]] = []
    for run, symbol in enumerate(frame.symbols):
        lo, hi = int(frame.starts[run]), int(frame.ends[run])
        ts = frame.ts[lo:hi]
        sessions = _sessions(instruments[symbol], ts)
        first, end = _session_rows(sessions, ts)
        used = end > first
        labels = _bucket_start(_bucket_ids(sessions.days[used] * DAY_US, tf), tf)
        first, end = first[used], end[used]
        new = np.concatenate([[True], labels[1:] != labels[:-1]])
        last = np.append(np.flatnonzero(new)[1:] - 1, len(labels) - 1)
        parts.append((lo + first[new], lo + end[last], labels[new], np.full(int(new.sum()), run)))
    starts, ends, labels, runs = (np.concatenate([p[i] for p in parts]) for i in range(4))
    return Groups(starts.astype(np.int64), ends.astype(np.int64)), labels, runs


def _aggregate(
    frame: SortedBars, groups: Groups, labels: Array, runs: Array, tf: Timeframe
) -> pa.Table:
    table = frame.table
    count = len(groups)
    trades = table.column("trades")
    valid = valid_mask(trades)
    floats = {
        c: float_values(table.column(c)) for c in ("open", "high", "low", "close", "volume", "vwap")
    }
    sums = reduce_bars(
        groups,
        floats["open"],
        floats["high"],
        floats["low"],
        floats["close"],
        floats["volume"],
        floats["vwap"],
        int64_values(trades.fill_null(0) if valid is not None else trades),
        valid,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap = sums.price_volume / sums.volume
    symbols = pa.DictionaryArray.from_arrays(
        pa.array(runs.astype(np.int32)), pa.array(frame.symbols, pa.string())
    )
    columns: dict[str, Any] = {
        "symbol": symbols.cast(pa.string()),
        "timeframe": constant_column(str(tf), count),
        "ts": pa.array(labels, pa.int64()).cast(TS_TYPE),
        "open": sums.open,
        "high": sums.high,
        "low": sums.low,
        "close": sums.close,
        "volume": sums.volume,
        "trades": pa.array(sums.trades, pa.int64(), mask=sums.trades_missing),
        "vwap": pa.array(vwap, mask=sums.volume == 0),
        "source": table.column("source").take(pa.array(groups.starts)),
    }
    return pa.table(columns).cast(BAR_SCHEMA)


def bucket_end(instrument: Instrument, tf: Timeframe, label_us: int) -> int:
    """When the bar of ``tf`` labelled ``label_us`` is complete (epoch µs): the end of its
    bucket, or the close of the last trading session inside it when that is earlier."""
    if tf.is_intraday:
        end = label_us + tf.micros
        sessions = sessions_for(instrument, label_us, end)
        return min(end, int(sessions.closes[-1])) if len(sessions) else end
    next_label = to_epoch_us(tf.next_start(from_epoch_us(label_us)))
    first_day, next_day = label_us // DAY_US, next_label // DAY_US
    sessions = sessions_for(instrument, label_us - 2 * DAY_US, next_label + 2 * DAY_US)
    inside = sessions.between_days(first_day, next_day - 1)
    return int(inside.closes[-1]) if len(inside) else next_label


def _partial(
    frame: SortedBars,
    groups: Groups,
    labels: Array,
    runs: Array,
    tf: Timeframe,
    instruments: Instruments,
    now_us: int,
) -> dict[str, datetime]:
    """The last bar of each symbol whose bucket is not complete at ``now_us``."""
    partial: dict[str, datetime] = {}
    if len(groups) == 0:
        return partial
    last_of_run = np.append(np.flatnonzero(runs[1:] != runs[:-1]), len(runs) - 1)
    for g in last_of_run.tolist():
        symbol = frame.symbols[int(runs[g])]
        if bucket_end(instruments[symbol], tf, int(labels[g])) > now_us:
            partial[symbol] = from_epoch_us(int(labels[g]))
    return partial
