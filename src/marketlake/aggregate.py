"""Timeframe roll-ups: exact, session-aware, incremental.

A roll-up bar takes the first open, the highest high, the lowest low, the last
close, the summed volume and trade count, and the volume-weighted vwap (a bar
without vwap counts at its close) of the bars in its bucket.

- **Intraday buckets** (``5m``, ``1h``, ``4h`` …) are floors of the UTC epoch.
- **Daily bars follow the instrument's sessions** (:mod:`marketlake.sessions`): a US
  stock's ``1d`` bar covers 09:30-16:00 New York whatever the DST offset, and is
  labelled with its trading date at 00:00 UTC; bars outside every session stay
  out of it. Weekly bars are labelled with the Monday, monthly with the first day,
  ``Nd`` with epoch-aligned N-day blocks of trading dates.
- **Exact**: sums use the compensated summation of pandas in row order
  (:func:`marketlake.kernels.reduce_bars`), so a roll-up equals pandas ``resample``
  bit for bit; the property tests hold it to that.
- **Fast**: one pass of NumPy reductions over rows sorted by (symbol, ts), the
  order the store returns; unsorted input is sorted first (stably).
- **Incremental**: :func:`aggregate_store` recomputes only the buckets holding
  source bars in a range, which ingest calls after every write; the still-forming
  last bucket of a symbol is reported in :attr:`Rollup.partial`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from marketlake.columns import (
    Groups,
    SortedBars,
    float_values,
    int64_values,
    string_runs,
    valid_mask,
)
from marketlake.errors import InputError
from marketlake.kernels import bucket_groups, reduce_bars
from marketlake.schema import (
    BAR_SCHEMA,
    TS_TYPE,
    Instrument,
    Timeframe,
    constant_column,
    default_instrument,
    from_epoch_us,
    normalize_symbol,
    to_epoch_us,
    utcnow,
)
from marketlake.sessions import DAY_US, Sessions, sessions_for
from marketlake.store.base import Store, WriteResult

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


def rollup(bars: pa.Table, to: str | Timeframe, *,
           instruments: Instruments | None = None) -> pa.Table:
    """Roll canonical bars up to the coarser timeframe ``to`` (see the module docstring)."""
    return rollup_bars(bars, to, instruments=instruments).table


def rollup_bars(bars: pa.Table, to: str | Timeframe, *, instruments: Instruments | None = None,
                now: datetime | None = None) -> Rollup:
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
    partial = _partial(frame, groups, labels, runs, dst, lookup,
                       to_epoch_us(now) if now is not None else to_epoch_us(utcnow()))
    first_ts, last_ts = frame.ts[groups.starts], frame.ts[groups.ends - 1]
    if frame.symbols != sorted(frame.symbols):  # symbol runs in another order: sort the output
        rank = np.argsort(np.argsort(np.asarray(frame.symbols, dtype=object)))
        order = np.argsort(rank[runs], kind="stable")
        table, first_ts, last_ts = table.take(pa.array(order)), first_ts[order], last_ts[order]
    return Rollup(table, first_ts, last_ts, partial)


def _source_timeframe(bars: pa.Table) -> str:
    _, values = string_runs(bars.column("timeframe"))
    if len(set(values)) != 1:
        raise InputError(f"bars hold several timeframes ({', '.join(sorted(set(values)))}); "
                         "roll up one timeframe at a time", param="timeframe")
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
    return (np.searchsorted(ts, sessions.opens, side="left"),
            np.searchsorted(ts, sessions.closes, side="left"))


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


def _session_groups(frame: SortedBars, tf: Timeframe,
                    instruments: Instruments) -> tuple[Groups, Array, Array]:
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
        parts.append((lo + first[new], lo + end[last], labels[new],
                      np.full(int(new.sum()), run)))
    starts, ends, labels, runs = (np.concatenate([p[i] for p in parts]) for i in range(4))
    return Groups(starts.astype(np.int64), ends.astype(np.int64)), labels, runs


def _aggregate(frame: SortedBars, groups: Groups, labels: Array, runs: Array,
               tf: Timeframe) -> pa.Table:
    table = frame.table
    count = len(groups)
    trades = table.column("trades")
    valid = valid_mask(trades)
    floats = {c: float_values(table.column(c))
              for c in ("open", "high", "low", "close", "volume", "vwap")}
    sums = reduce_bars(
        groups, floats["open"], floats["high"], floats["low"], floats["close"],
        floats["volume"], floats["vwap"],
        int64_values(trades.fill_null(0) if valid is not None else trades), valid,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap = sums.price_volume / sums.volume
    symbols = pa.DictionaryArray.from_arrays(pa.array(runs.astype(np.int32)),
                                             pa.array(frame.symbols, pa.string()))
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


def _partial(frame: SortedBars, groups: Groups, labels: Array, runs: Array, tf: Timeframe,
             instruments: Instruments, now_us: int) -> dict[str, datetime]:
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


# -- roll-ups in the store ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """What one roll-up of one symbol to one timeframe wrote."""

    symbol: str
    timeframe: str
    source: str
    source_bars: int
    bars: int
    written: WriteResult
    first: datetime | None = None
    last: datetime | None = None
    partial: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "timeframe": self.timeframe, "source": self.source,
                "source_bars": self.source_bars, "bars": self.bars, **self.written.as_dict(),
                "first": self.first, "last": self.last, "partial": self.partial}


def rollup_targets(source: str | Timeframe, targets: Sequence[str | Timeframe]) -> list[Timeframe]:
    """The ``targets`` that can be built from ``source``, finest first (others are skipped)."""
    src = Timeframe.parse(source)
    usable: list[Timeframe] = []
    for target in targets:
        try:
            usable.append(check_rollup(src, target)[1])
        except InputError:
            continue
    return sorted(set(usable), key=_duration)


def _duration(tf: Timeframe) -> int:
    return tf.micros if not tf.is_calendar else 31 * DAY_US


def aggregate_store(
    store: Store,
    symbols: Sequence[str] | None,
    source: str | Timeframe,
    targets: Sequence[str | Timeframe],
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    now: datetime | None = None,
) -> list[AggregateResult]:
    """Roll stored ``source`` bars of ``symbols`` (default: all that have some) up to each
    target, recomputing only the buckets that hold source bars in ``[start, end)``.

    Weekly and monthly bars are built from the daily ones when ``1d`` is a target
    too (or the source). Rolled-up bars replace the stored bars of their buckets.
    """
    src = Timeframe.parse(source)
    tfs = [check_rollup(src, t)[1] for t in targets]
    tfs = sorted(set(tfs), key=_duration)
    if symbols is None:
        names = [row["symbol"] for row in store.bar_summary() if row["timeframe"] == str(src)]
    else:
        names = [normalize_symbol(s) for s in symbols]
    results: list[AggregateResult] = []
    for symbol in names:
        instrument = store.get_instrument(symbol, missing_ok=True) or default_instrument(symbol)
        daily = str(src) == "1d" or any(str(t) == "1d" for t in tfs)
        for tf in tfs:
            base = Timeframe.parse("1d") if daily and tf.unit in ("w", "mo") else src
            results.append(_rollup_stored(store, instrument, base, tf, start, end, now))
    return results


def _rollup_stored(store: Store, instrument: Instrument, src: Timeframe, tf: Timeframe,
                   start: datetime | None, end: datetime | None,
                   now: datetime | None) -> AggregateResult:
    symbol = instrument.symbol
    lo, hi = _widened(tf, start, end)
    table = store.read_bars(symbol, src, lo, hi).table
    rolled = rollup_bars(table, tf, instruments={symbol: instrument}, now=now)
    out = rolled.table
    if start is not None or end is not None:  # only the buckets with source bars in range
        touched = np.ones(out.num_rows, dtype=bool)
        if start is not None:
            touched &= rolled.last_ts >= to_epoch_us(start)
        if end is not None:
            touched &= rolled.first_ts < to_epoch_us(end)
        out = out.filter(pa.array(touched))
    written = store.write_bars(out, on_conflict="replace") if out.num_rows else WriteResult()
    ts = out.column("ts")
    partial = rolled.partial.get(symbol)
    return AggregateResult(
        symbol, str(tf), str(src), table.num_rows, out.num_rows, written,
        ts[0].as_py() if out.num_rows else None, ts[-1].as_py() if out.num_rows else None,
        partial if out.num_rows and partial == ts[-1].as_py() else None)


def _widened(tf: Timeframe, start: datetime | None,
             end: datetime | None) -> tuple[datetime | None, datetime | None]:
    """A read range that holds every bucket touching ``[start, end)`` whole."""
    if tf.is_intraday:
        return (tf.floor(start) if start else None,
                tf.next_start(end - timedelta(microseconds=1)) if end else None)
    margin = timedelta(microseconds=_duration(tf)) + timedelta(days=2)
    return (start - margin if start else None, end + margin if end else None)


def rollup_spans(store: Store, spans: Mapping[str, tuple[datetime, datetime]],
                 source: str | Timeframe, targets: Sequence[str], *,
                 instruments: Instruments | None = None,
                 now: datetime | None = None) -> dict[str, int]:
    """Recompute the roll-ups touched by new ``source`` bars, each symbol with its own span
    of them (first and last, inclusive): what ingest and repair run after they write. The
    source bars are read once for every target built from them, and the targets built from
    the same bars are written together, for all the symbols at once. Returns the bars
    rolled up per symbol. ``instruments`` may hold the symbols' instruments."""
    counts = dict.fromkeys(spans, 0)
    usable = rollup_targets(source, targets)
    if not usable or not spans:
        return counts
    src = Timeframe.parse(source)
    symbols = sorted(spans)
    known = instruments or {}
    lookup = {s: known.get(s) or store.get_instrument(s, missing_ok=True)
              or default_instrument(s) for s in symbols}
    firsts = np.array([to_epoch_us(spans[s][0]) for s in symbols], dtype=np.int64)
    ends = np.array([to_epoch_us(spans[s][1]) + 1 for s in symbols], dtype=np.int64)
    daily = str(src) == "1d" or any(str(t) == "1d" for t in usable)
    bases = {tf: Timeframe.parse("1d") if daily and tf.unit in ("w", "mo") else src
             for tf in usable}
    windows: dict[str, tuple[datetime, datetime]] = {}  # per base: what its targets need
    for tf, base in bases.items():
        lo, hi = _widened(tf, from_epoch_us(int(firsts.min())), from_epoch_us(int(ends.max())))
        assert lo is not None
        assert hi is not None
        known_lo, known_hi = windows.get(str(base), (lo, hi))
        windows[str(base)] = (min(lo, known_lo), max(hi, known_hi))
    for name in sorted(windows, key=lambda n: _duration(Timeframe.parse(n))):
        # the source's targets first: 1d is written before 1w and 1mo read it
        read = store.read_bars(symbols, name, *windows[name]).table
        outs = []
        for tf in (t for t in usable if str(bases[t]) == name):
            rolled = rollup_bars(read, tf, instruments=lookup, now=now)
            if not rolled.table.num_rows:
                continue
            # only the buckets holding source bars inside their own symbol's span
            which = pc.index_in(rolled.table.column("symbol"), pa.array(symbols)).to_numpy()
            touched = (rolled.last_ts >= firsts[which]) & (rolled.first_ts < ends[which])
            outs.append(rolled.table.filter(pa.array(touched)))
            for k, n in enumerate(np.bincount(which[touched], minlength=len(symbols)).tolist()):
                counts[symbols[k]] += n
        out = pa.concat_tables(outs) if outs else None
        if out is not None and out.num_rows:
            store.write_bars(out, on_conflict="replace")  # all targets of a base at once
    return counts


def partial_bucket(store: Store, symbol: str, timeframe: str | Timeframe,
                   now: datetime | None = None) -> datetime | None:
    """The open time of the stored last bar of ``symbol`` at ``timeframe`` when that bar
    is still forming at ``now`` (its bucket or session has not ended), else None."""
    tf = Timeframe.parse(timeframe)
    latest = store.latest_bar(symbol, tf)
    if latest is None:
        return None
    instrument = store.get_instrument(symbol, missing_ok=True) or default_instrument(symbol)
    label = to_epoch_us(latest["ts"])
    moment = to_epoch_us(now or utcnow())
    return latest["ts"] if bucket_end(instrument, tf, label) > moment else None
