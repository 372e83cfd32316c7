"""An in-process cache of hot bar series, so popular reads skip the store.

A cached series is one (symbol, timeframe) as one Arrow table sorted by time,
plus its timestamps as an int64 array: any page (range, limit, keyset cursor)
is then a binary search and a zero-copy slice, with exactly the rows and
cursor :meth:`Store.read_bars` would give.

Freshness: when the store is *exclusive* (the embedded DuckDB file, which no
other process can write while the API holds it) an entry is valid while the
store's write counter is unchanged, so every write is seen at once. Other
stores (PostgreSQL, written by workers in other processes) keep entries for
``ttl_s`` seconds, counted from the start of the read that loaded them; a series
used past half its TTL is reloaded in a background thread, so a busy series is
replaced before it expires instead of stalling requests while it reloads.
Series longer than ``max_rows`` are never cached; the least recently used
series are evicted to stay within ``max_rows`` in total.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import structlog

from marketlake.errors import InputError, MarketLakeError
from marketlake.schema import to_epoch_us
from marketlake.store.base import (
    MAX_LIMIT,
    BarPage,
    Store,
    check_range,
    decode_cursor,
    encode_cursor,
)

T = TypeVar("T")
log = structlog.get_logger("marketlake.api")


@dataclass(frozen=True, slots=True)
class Series:
    """All bars of one symbol and timeframe, sorted by ``ts``."""

    symbol: str
    timeframe: str
    table: pa.Table
    ts_us: np.ndarray[Any, np.dtype[np.int64]]

    @classmethod
    def of(cls, symbol: str, timeframe: str, table: pa.Table) -> Series:
        ts = table.column("ts").cast(pa.int64()).to_numpy()
        return cls(symbol, timeframe, table, np.ascontiguousarray(ts, dtype=np.int64))

    @property
    def rows(self) -> int:
        return int(self.table.num_rows)

    def page(
        self, start: datetime | None, end: datetime | None, limit: int | None, cursor: str | None
    ) -> BarPage:
        """The rows and cursor ``Store.read_bars`` returns for this one symbol."""
        check_range(start, end)
        if limit is not None and not 1 <= limit <= MAX_LIMIT:
            raise InputError(f"limit {limit} must be between 1 and {MAX_LIMIT}", param="limit")
        lo, hi = self._bounds(start, end, cursor)
        count = max(0, hi - lo)
        if limit is None or count <= limit:
            return BarPage(self.table.slice(lo, count))
        last = self.table.column("ts")[lo + limit - 1].as_py()
        return BarPage(self.table.slice(lo, limit), encode_cursor(self.symbol, last))

    def _bounds(
        self, start: datetime | None, end: datetime | None, cursor: str | None
    ) -> tuple[int, int]:
        ts = self.ts_us
        lo = 0 if start is None else int(np.searchsorted(ts, to_epoch_us(start), "left"))
        hi = len(ts) if end is None else int(np.searchsorted(ts, to_epoch_us(end), "left"))
        if cursor is not None:
            after_symbol, after_ts = decode_cursor(cursor)
            if after_symbol > self.symbol:
                lo = hi
            elif after_symbol == self.symbol:
                lo = max(lo, int(np.searchsorted(ts, to_epoch_us(after_ts), "right")))
        return lo, hi

    def latest(self) -> dict[str, Any] | None:
        return self.table.slice(self.rows - 1, 1).to_pylist()[0] if self.rows else None


@dataclass(slots=True)
class _Entry:
    value: Any
    rows: int
    generation: int
    loaded: float


_TOO_BIG = object()
MAX_ENTRIES = 4096


class BarCache:
    """Hot series and small computed values, invalidated by store writes (see module doc)."""

    def __init__(self, max_rows: int, ttl_s: float) -> None:
        self.max_rows = max_rows
        self.ttl_s = ttl_s
        self._entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()
        self._loading: dict[tuple[Any, ...], threading.Lock] = {}
        self._refreshing: set[tuple[Any, ...]] = set()
        self._refresher: ThreadPoolExecutor | None = None

    @property
    def enabled(self) -> bool:
        return self.max_rows > 0

    def _fresh(self, store: Store, entry: _Entry) -> bool:
        if store.exclusive:
            return entry.generation == store.generation
        return time.monotonic() - entry.loaded < self.ttl_s

    def _get(self, store: Store, key: tuple[Any, ...]) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if not self._fresh(store, entry):
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            if (
                key[0] == "series"
                and not store.exclusive
                and key not in self._refreshing
                and time.monotonic() - entry.loaded >= self.ttl_s / 2
            ):
                self._refresh_later(store, key)
            return entry

    def _refresh_later(self, store: Store, key: tuple[Any, ...]) -> None:
        """Reload series ``key`` in the background (called holding ``_lock``)."""
        if self._refresher is None:
            self._refresher = ThreadPoolExecutor(1, thread_name_prefix="bar-cache-refresh")
        self._refreshing.add(key)

        def refresh() -> None:
            try:
                with self._single_flight(key):
                    self._load_series(store, key, key[1], key[2])
            except MarketLakeError as exc:  # the next request past the TTL retries and reports
                log.warning("bar_cache_refresh_failed", series=key[1:], error=exc.message)
            finally:
                with self._lock:
                    self._refreshing.discard(key)

        self._refresher.submit(refresh)

    def close(self) -> None:
        """Stop background refreshes (queued ones are dropped)."""
        if self._refresher is not None:
            self._refresher.shutdown(wait=False, cancel_futures=True)
            self._refresher = None

    def _put(
        self,
        key: tuple[Any, ...],
        value: Any,
        rows: int,
        generation: int,
        loaded: float | None = None,
    ) -> None:
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = _Entry(
                value, rows, generation, time.monotonic() if loaded is None else loaded
            )
            self._rows += rows
            while len(self._entries) > 1 and (
                self._rows > self.max_rows or len(self._entries) > MAX_ENTRIES
            ):
                self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[Any, ...]) -> None:
        entry = self._entries.pop(key)
        self._rows -= entry.rows

    @contextmanager
    def _single_flight(self, key: tuple[Any, ...]) -> Iterator[None]:
        """Hold the load of ``key``: callers missing the same entry at once wait for the
        first one's load instead of all querying the store (a TTL expiry under load
        would otherwise send every in-flight request to the store)."""
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            try:
                yield
            finally:
                with self._lock:
                    if self._loading.get(key) is gate:
                        del self._loading[key]

    def peek(self, store: Store, symbol: str, timeframe: str) -> Series | None:
        """The cached series if it is fresh; never touches the store."""
        if not self.enabled:
            return None
        entry = self._get(store, ("series", symbol, timeframe))
        return entry.value if entry is not None and entry.value is not _TOO_BIG else None

    def series(self, store: Store, symbol: str, timeframe: str) -> Series | None:
        """The series, loaded from the store if needed; None when it is too long to cache."""
        if not self.enabled:
            return None
        key = ("series", symbol, timeframe)
        entry = self._get(store, key)
        if entry is None:
            with self._single_flight(key):
                entry = self._get(store, key)  # loaded while this caller waited?
                if entry is None:
                    return self._load_series(store, key, symbol, timeframe)
        return None if entry.value is _TOO_BIG else entry.value

    def _load_series(
        self, store: Store, key: tuple[Any, ...], symbol: str, timeframe: str
    ) -> Series | None:
        generation = store.generation
        began = time.monotonic()
        limit = min(self.max_rows, MAX_LIMIT)
        if store.count_bars(symbol, timeframe) > limit:
            self._put(key, _TOO_BIG, 0, generation, began)
            return None
        page = store.read_bars(symbol, timeframe, limit=limit)
        if page.next_cursor is not None:  # grew since the count
            self._put(key, _TOO_BIG, 0, generation, began)
            return None
        found = Series.of(symbol, timeframe, page.table)
        self._put(key, found, found.rows, generation, began)
        return found

    def memo(self, store: Store, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        """``compute()``, remembered under ``key`` with the same freshness rule as series."""
        if not self.enabled:
            return compute()
        full = ("memo", *key)
        entry = self._get(store, full)
        if entry is None:
            with self._single_flight(full):
                entry = self._get(store, full)
                if entry is None:
                    generation, began = store.generation, time.monotonic()
                    value = compute()
                    self._put(full, value, 0, generation, began)
                    return value
        return entry.value  # type: ignore[no-any-return]

    def remember(
        self, store: Store, key: tuple[Any, ...], value: Any, *, generation: int, weight: int = 0
    ) -> None:
        """Keep ``value`` under ``key`` (as ``memo`` would), counting ``weight`` bars' worth
        of memory against ``max_rows``; ``generation`` is the store's before ``value`` was
        read."""
        if self.enabled:
            self._put(("memo", *key), value, weight, generation)

    def peek_memo(self, store: Store, key: tuple[Any, ...]) -> tuple[bool, Any]:
        """``(True, value)`` when ``key`` is remembered and fresh, else ``(False, None)``."""
        entry = self._get(store, ("memo", *key)) if self.enabled else None
        return (False, None) if entry is None else (True, entry.value)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._rows = 0
