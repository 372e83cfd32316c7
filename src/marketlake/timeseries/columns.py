"""Columnar building blocks shared by validation and roll-ups.

Bars arrive as Arrow tables sorted by (symbol, ts) in the usual case (the store
returns them so). These helpers turn such a table into NumPy views without
copying, find the runs of equal symbols without hashing ten million strings,
and describe groups of consecutive rows (the compiled loops that reduce them are
in :mod:`marketlake.timeseries.kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Array = np.ndarray[Any, Any]
_MAX_BISECT_RUNS = 2000
MAX_SLICES = 1024  # runs of rows up to which a subset is sliced, not copied


def as_chunked(column: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    return column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])


def int64_values(column: pa.Array | pa.ChunkedArray) -> Array:
    """Int64 (or timestamp) values as one NumPy array; zero-copy for a single chunk."""
    chunks = [
        c.view(pa.int64()) if pa.types.is_timestamp(c.type) else c
        for c in as_chunked(column).chunks
    ]
    if len(chunks) == 1:
        return np.asarray(chunks[0].to_numpy(zero_copy_only=False), dtype=np.int64)
    if not chunks:
        return np.empty(0, np.int64)
    return np.concatenate(
        [np.asarray(c.to_numpy(zero_copy_only=False), dtype=np.int64) for c in chunks]
    )


def float_values(column: pa.Array | pa.ChunkedArray) -> Array:
    """Float64 values as one NumPy array (nulls become NaN); zero-copy for a single chunk."""
    chunks = as_chunked(column).chunks
    if len(chunks) == 1:
        return np.asarray(chunks[0].to_numpy(zero_copy_only=False), dtype=np.float64)
    if not chunks:
        return np.empty(0, np.float64)
    return np.concatenate(
        [np.asarray(c.to_numpy(zero_copy_only=False), dtype=np.float64) for c in chunks]
    )


def valid_mask(column: pa.Array | pa.ChunkedArray) -> Array | None:
    """True where a value is present; None when the column has no nulls."""
    if column.null_count == 0:
        return None
    return np.asarray(pc.is_valid(column).to_numpy(zero_copy_only=False), dtype=bool)


# -- runs of equal strings -------------------------------------------------------------


def string_runs(column: pa.Array | pa.ChunkedArray) -> tuple[Array, list[str]]:
    """Start row of every run of equal consecutive values, and each run's value.

    A column grouped by value (sorted by symbol, or one symbol) is split by
    bisection and each run is verified with two memory comparisons on the raw
    Arrow buffers; anything else falls back to Arrow's run-end encoding.
    """
    starts: list[Array] = []
    values: list[str] = []
    offset = 0
    for chunk in as_chunked(column).chunks:
        if len(chunk) == 0:
            continue
        chunk_starts, chunk_values = _chunk_runs(chunk)
        if values and chunk_values[0] == values[-1]:
            chunk_starts, chunk_values = chunk_starts[1:], chunk_values[1:]
        starts.append(chunk_starts + offset)
        values.extend(chunk_values)
        offset += len(chunk)
    if not starts:
        return np.empty(0, np.int64), []
    return np.concatenate(starts).astype(np.int64), values


def _chunk_runs(chunk: pa.Array) -> tuple[Array, list[str]]:
    if chunk.null_count == 0 and (
        pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)
    ):
        found = _bisect_runs(chunk)
        if found is not None:
            return found
    encoded = pc.run_end_encode(chunk.cast(pa.string()))
    ends = encoded.run_ends.to_numpy().astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    return starts, [str(v) for v in encoded.values.to_pylist()]


class _RawStrings:
    """Offsets and bytes of an Arrow string array, for comparisons without Python objects."""

    def __init__(self, chunk: pa.Array) -> None:
        width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        buffers = chunk.buffers()
        n = len(chunk)
        self.offsets = np.frombuffer(buffers[1], dtype=width)[chunk.offset : chunk.offset + n + 1]
        self.data = (
            np.frombuffer(buffers[2], dtype=np.uint8)
            if buffers[2] is not None
            else np.empty(0, np.uint8)
        )

    def value(self, i: int) -> bytes:
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def is_constant(self, lo: int, hi: int, value: bytes) -> bool:
        """True when rows ``[lo, hi)`` all hold ``value``."""
        size = len(value)
        offsets = self.offsets[lo : hi + 1]
        if int(offsets[-1] - offsets[0]) != size * (hi - lo):
            return False
        if size == 0:
            return True
        # lengths summing to size * rows are all equal to size when none is longer
        if int(np.subtract(offsets[1:], offsets[:-1]).max()) != size:
            return False
        block = self.data[offsets[0] : offsets[-1]]
        # a block equal to itself shifted by one value is that value repeated
        return block[:size].tobytes() == value and bool(np.array_equal(block[size:], block[:-size]))


def _bisect_runs(chunk: pa.Array) -> tuple[Array, list[str]] | None:
    raw = _RawStrings(chunk)
    n = len(chunk)
    starts: list[int] = []
    values: list[bytes] = []
    lo = 0
    while lo < n:
        if len(starts) >= _MAX_BISECT_RUNS:
            return None
        value = raw.value(lo)
        hi = _run_end(raw, lo, n, value)
        if not raw.is_constant(lo, hi, value):
            return None
        starts.append(lo)
        values.append(value)
        lo = hi
    return np.asarray(starts, dtype=np.int64), [v.decode() for v in values]


def _run_end(raw: _RawStrings, lo: int, n: int, value: bytes) -> int:
    """The first row after ``lo`` not holding ``value``, if equal rows form one block."""
    known, step, probe = lo, 1, lo + 1  # gallop, then bisect
    while probe < n and raw.value(probe) == value:
        known, step = probe, step * 2
        probe = known + step
    hi = min(probe, n)
    while hi - known > 1:
        mid = (known + hi) // 2
        if raw.value(mid) == value:
            known = mid
        else:
            hi = mid
    return hi


# -- bars grouped into series ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SortedBars:
    """Bars grouped into series (one per symbol, or per symbol and timeframe), each in
    ascending time: rows ``starts[k]:ends[k]`` are series ``k``.

    ``order`` maps each row back to the row of the table it was made from (None when
    the table was in this order already, as tables from the store are).
    """

    table: pa.Table
    ts: Array
    starts: Array
    ends: Array
    symbols: list[str]
    timeframes: list[str]
    order: Array | None = None

    @classmethod
    def of(cls, table: pa.Table, *, by_timeframe: bool = False) -> SortedBars:
        """Group ``table``; rows are sorted (stably) only when they are not grouped yet."""
        bars = cls._build(table, by_timeframe)
        if bars.is_sorted():
            return bars
        keys = [("symbol", "ascending")] + ([("timeframe", "ascending")] if by_timeframe else [])
        order = pc.sort_indices(table, [*keys, ("ts", "ascending")])
        sorted_bars = cls._build(table.take(order), by_timeframe)
        return replace(sorted_bars, order=order.to_numpy())

    @classmethod
    def _build(cls, table: pa.Table, by_timeframe: bool) -> SortedBars:
        n = table.num_rows
        starts, symbols = string_runs(table.column("symbol"))
        timeframes = [""] * len(symbols)
        if by_timeframe:
            tf_starts, tf_values = string_runs(table.column("timeframe"))
            merged = np.union1d(starts, tf_starts)
            symbols = [symbols[i] for i in np.searchsorted(starts, merged, side="right") - 1]
            timeframes = [tf_values[i] for i in np.searchsorted(tf_starts, merged, "right") - 1]
            starts = merged
        ends = np.append(starts[1:], n).astype(np.int64)
        return cls(
            table,
            int64_values(table.column("ts")),
            starts.astype(np.int64),
            ends,
            symbols,
            timeframes,
        )

    def __len__(self) -> int:
        return len(self.starts)

    def is_sorted(self) -> bool:
        """Each series in one run and in ascending time (runs in any order)."""
        keys = list(zip(self.symbols, self.timeframes, strict=True))
        if len(set(keys)) != len(keys):
            return False
        falls = np.flatnonzero(self.ts[1:] < self.ts[:-1]) + 1
        return bool(np.isin(falls, self.starts).all())

    def series_of(self, rows: Array) -> Array:
        """The series of each row number."""
        return np.searchsorted(self.starts, rows, side="right") - 1

    def input_rows(self, rows: Array) -> Array:
        """Row numbers of the original table for row numbers of this one."""
        return rows if self.order is None else self.order[rows]

    def take(self, rows: Array) -> SortedBars:
        """The subset of ``rows`` (ascending), still grouped and in order."""
        by_timeframe = any(self.timeframes)
        subset = SortedBars._build(take_rows(self.table, rows), by_timeframe)
        return replace(subset, order=self.input_rows(rows))


def take_rows(table: pa.Table, rows: Array) -> pa.Table:
    """The ascending ``rows`` of ``table``: zero-copy slices when they form few runs (taking
    every column, strings included, costs more than the work done on them), else a take."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    if len(rows) == 0 or len(breaks) >= MAX_SLICES:
        return table.take(pa.array(rows))
    firsts = rows[np.concatenate([[0], breaks])].tolist()
    ends = (rows[np.append(breaks, len(rows)) - 1] + 1).tolist()
    return slices(table, firsts, ends)


def slices(table: pa.Table, starts: list[int], ends: list[int]) -> pa.Table:
    """The rows ``[start, end)`` of every pair, in order, as zero-copy slices of ``table``."""
    parts = [table.slice(a, b - a) for a, b in zip(starts, ends, strict=True) if b > a]
    return pa.concat_tables(parts) if parts else table.slice(0, 0)


# -- group reductions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Groups:
    """Groups of rows: row ``starts`` and ``ends`` (exclusive) of each group, in order."""

    starts: Array
    ends: Array

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def lengths(self) -> Array:
        return self.ends - self.starts
