"""Roll-ups in the store: stored bars of one timeframe rolled up into others and written back.

:func:`aggregate_store` is ``marketlake aggregate``; :func:`rollup_spans` is what ingest and
repair call for the ranges they just wrote. The roll-up itself is
:func:`marketlake.timeseries.aggregate.rollup_bars`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from marketlake.errors import InputError
from marketlake.schema import (
    Instrument,
    Timeframe,
    default_instrument,
    from_epoch_us,
    normalize_symbol,
    to_epoch_us,
)
from marketlake.store.base import Store, WriteResult
from marketlake.timeseries.aggregate import Instruments, check_rollup, rollup_bars
from marketlake.timeseries.sessions import DAY_US


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
    clashes: list[SourceClash] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "source": self.source,
            "source_bars": self.source_bars,
            "bars": self.bars,
            **self.written.as_dict(),
            "first": self.first,
            "last": self.last,
            "partial": self.partial,
            "notes": [str(c) for c in self.clashes],
        }


@dataclass(frozen=True, slots=True)
class SourceClash:
    """Stored bars of another source in buckets a roll-up computed: kept or replaced."""

    symbol: str
    timeframe: str
    stored_source: str
    rolled_source: str
    bars: int
    replaced: bool

    def __str__(self) -> str:
        if self.replaced:
            return (
                f"replaced {self.bars} stored {self.timeframe} bars from {self.stored_source} "
                f"with roll-ups of {self.rolled_source} bars (set "
                "MARKETLAKE_ROLLUP_REPLACE_SOURCES=false to keep them)"
            )
        return (
            f"kept {self.bars} stored {self.timeframe} bars from {self.stored_source}: not "
            f"replaced by roll-ups of {self.rolled_source} bars (pass --replace-sources or set "
            "MARKETLAKE_ROLLUP_REPLACE_SOURCES=true to replace them)"
        )


def protect_other_sources(
    store: Store, rolled: pa.Table, replace: bool
) -> tuple[pa.Table, list[SourceClash]]:
    """``rolled`` without the buckets whose stored bar came from another source (unless
    ``replace``), and what was kept or replaced: a roll-up never silently overwrites the
    bars a provider delivered at that timeframe."""
    if rolled.num_rows == 0:
        return rolled, []
    symbols = sorted(set(rolled.column("symbol").to_pylist()))
    clashes: list[SourceClash] = []
    keep = np.ones(rolled.num_rows, dtype=bool)
    for tf_name in sorted(set(rolled.column("timeframe").to_pylist())):
        mine = pc.equal(rolled.column("timeframe"), tf_name)
        part = rolled.filter(mine)
        ts = part.column("ts")
        stored = store.read_bars(
            symbols,
            tf_name,
            pc.min(ts).as_py(),
            pc.max(ts).as_py() + timedelta(microseconds=1),
        ).table.select(["symbol", "ts", "source"])
        if stored.num_rows == 0:
            continue
        index = pa.table(
            {
                "symbol": part.column("symbol"),
                "ts": ts,
                "row": pa.array(np.flatnonzero(mine.to_numpy(zero_copy_only=False))),
                "rolled": part.column("source"),
            }
        )
        joined = index.join(stored, ["symbol", "ts"], join_type="inner")
        other = joined.filter(pc.not_equal(joined.column("source"), joined.column("rolled")))
        if other.num_rows == 0:
            continue
        if not replace:
            keep[other.column("row").to_numpy()] = False
        groups = other.group_by(["symbol", "source", "rolled"]).aggregate([("row", "count")])
        clashes.extend(
            SourceClash(r["symbol"], tf_name, r["source"], r["rolled"], r["row_count"], replace)
            for r in groups.to_pylist()
        )
    return (rolled if keep.all() else rolled.filter(pa.array(keep))), clashes


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
    replace_sources: bool = False,
) -> list[AggregateResult]:
    """Roll stored ``source`` bars of ``symbols`` (default: all that have some) up to each
    target, recomputing only the buckets that hold source bars in ``[start, end)``.

    Weekly and monthly bars are built from the daily ones when ``1d`` is a target
    too (or the source). Rolled-up bars replace the stored bars of their buckets, except
    stored bars of another source (a provider's own bars at that timeframe) unless
    ``replace_sources``; each result's ``clashes`` says what was kept or replaced.
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
        instrument = store.instrument(symbol, missing_ok=True) or default_instrument(symbol)
        daily = str(src) == "1d" or any(str(t) == "1d" for t in tfs)
        for tf in tfs:
            base = Timeframe.parse("1d") if daily and tf.unit in ("w", "mo") else src
            results.append(
                _rollup_stored(store, instrument, base, tf, start, end, now, replace_sources)
            )
    return results


def _rollup_stored(
    store: Store,
    instrument: Instrument,
    src: Timeframe,
    tf: Timeframe,
    start: datetime | None,
    end: datetime | None,
    now: datetime | None,
    replace_sources: bool = False,
) -> AggregateResult:
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
    out, clashes = protect_other_sources(store, out, replace_sources)
    written = store.write_bars(out, on_conflict="replace") if out.num_rows else WriteResult()
    ts = out.column("ts")
    partial = rolled.partial.get(symbol)
    return AggregateResult(
        symbol,
        str(tf),
        str(src),
        table.num_rows,
        out.num_rows,
        written,
        ts[0].as_py() if out.num_rows else None,
        ts[-1].as_py() if out.num_rows else None,
        partial if out.num_rows and partial == ts[-1].as_py() else None,
        clashes,
    )


def _widened(
    tf: Timeframe, start: datetime | None, end: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """A read range that holds every bucket touching ``[start, end)`` whole."""
    if tf.is_intraday:
        return (
            tf.floor(start) if start else None,
            tf.next_start(end - timedelta(microseconds=1)) if end else None,
        )
    margin = timedelta(microseconds=_duration(tf)) + timedelta(days=2)
    return (start - margin if start else None, end + margin if end else None)


def rollup_spans(
    store: Store,
    spans: Mapping[str, tuple[datetime, datetime]],
    source: str | Timeframe,
    targets: Sequence[str],
    *,
    instruments: Instruments | None = None,
    now: datetime | None = None,
    replace_sources: bool = False,
    clashes: list[SourceClash] | None = None,
) -> dict[str, int]:
    """Recompute the roll-ups touched by new ``source`` bars, each symbol with its own span
    of them (first and last, inclusive): what ingest and repair run after they write. The
    source bars are read once for every target built from them, and the targets built from
    the same bars are written together, for all the symbols at once. Returns the bars
    rolled up per symbol. ``instruments`` may hold the symbols' instruments. Stored bars of
    another source are kept unless ``replace_sources``; ``clashes`` collects what was kept
    or replaced."""
    counts = dict.fromkeys(spans, 0)
    usable = rollup_targets(source, targets)
    if not usable or not spans:
        return counts
    src = Timeframe.parse(source)
    symbols = sorted(spans)
    known = instruments or {}
    lookup = {
        s: known.get(s) or store.instrument(s, missing_ok=True) or default_instrument(s)
        for s in symbols
    }
    firsts = np.array([to_epoch_us(spans[s][0]) for s in symbols], dtype=np.int64)
    ends = np.array([to_epoch_us(spans[s][1]) + 1 for s in symbols], dtype=np.int64)
    daily = str(src) == "1d" or any(str(t) == "1d" for t in usable)
    bases = {
        tf: Timeframe.parse("1d") if daily and tf.unit in ("w", "mo") else src for tf in usable
    }
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
            out, found = protect_other_sources(store, out, replace_sources)
            if clashes is not None:
                clashes.extend(found)
            store.write_bars(out, on_conflict="replace")  # all targets of a base at once
    return counts
