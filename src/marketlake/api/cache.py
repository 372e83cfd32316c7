"""An in-process cache of hot bar series, so popular reads skip the store.

A cached series is one (symbol, timeframe) as one Arrow table sorted by time,
plus its timestamps as an int64 array: any page (range, limit, keyset cursor)
is then a binary search and a zero-copy slice, with exactly the rows and
cursor :meth:`Store.read_bars` would give.

Freshness, three ways:

* When the store is *exclusive* (the embedded DuckDB file, which no other
  process can write while the API holds it) an entry is valid while the store's
  write counter is unchanged, so every write is seen at once.
* When the store is *versioned* (PostgreSQL: every write of bars bumps its
  series' version in the same transaction) and ``check_s`` > 0, an entry of a
  series (the series itself, and JSON pages rendered from it) is valid while its
  version is unchanged *and* that was confirmed by a query that started at most
  ``check_s`` ago. One query reads the versions of every cached series; it runs
  in a background thread once half of ``check_s`` has passed, so with steady
  traffic no request waits for it; a request that finds the last confirmation
  older than ``check_s`` runs it (one at a time: the others wait for that one).
  The bound: a page served from the cache holds every write committed at least
  ``check_s`` before the request (a write committed just before a check started
  is seen by that check). A changed series is reloaded in the background, and
  requests for it wait for that one load.
* Otherwise (no versions, or ``check_s`` = 0), and for values not tied to a
  series (the symbol list), entries live ``ttl_s`` seconds, counted from the
  start of the read that loaded them; a series used past half its TTL is
  reloaded in a background thread, so a busy series is replaced before it
  expires instead of stalling requests while it reloads.

Series longer than ``max_rows`` are never cached; the least recently used
series are evicted to stay within ``max_rows`` in total (rendered JSON pages
count against it by size), so ``max_rows`` bounds the cache's memory. At most
:data:`MAX_LOADS` series load at once (loads are transient peaks the allocator
keeps); a request missing a series while every slot is taken reads its page
from the store.
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


SeriesKey = tuple[str, str]


@dataclass(slots=True)
class _Entry:
    value: Any
    rows: int
    generation: int
    loaded: float
    series: SeriesKey | None = None


_TOO_BIG = object()
MAX_ENTRIES = 4096
MAX_LOADS = 2
"""Series loads running at once per process. A load holds a few times the series'
size while it decodes, and the allocator keeps the peak: 16 requests missing 16
series at once grew a server by ~250 MB. A request that finds every slot taken
reads its page from the store instead of waiting."""


class BarCache:
    """Hot series and small computed values, invalidated by store writes (see module doc)."""

    def __init__(self, max_rows: int, ttl_s: float, check_s: float = 0.0) -> None:
        self.max_rows = max_rows
        self.ttl_s = ttl_s
        self.check_s = check_s
        #: Latest known version of each cached series and the monotonic time at which
        #: the query that read it started.
        self._known: dict[SeriesKey, tuple[int, float]] = {}
        self._check_gate = threading.Lock()
        self._check_queued = False
        self._checker: ThreadPoolExecutor | None = None
        self.checks = 0
        self._loads = threading.BoundedSemaphore(MAX_LOADS)
        self.busy = 0
        self._entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()
        self._loading: dict[tuple[Any, ...], threading.Lock] = {}
        self._refreshing: set[tuple[Any, ...]] = set()
        self._refresher: ThreadPoolExecutor | None = None

    @property
    def enabled(self) -> bool:
        return self.max_rows > 0

    def versioned(self, store: Store) -> bool:
        """Whether entries of series are checked against the store's series versions."""
        return not store.exclusive and store.versioned and self.check_s > 0

    def _fresh(self, store: Store, entry: _Entry, now: float) -> bool | None:
        """True, False (stale: drop it), or None (maybe: its version needs a check)."""
        if store.exclusive:
            return entry.generation == store.generation
        if entry.series is not None and self.versioned(store):
            version, as_of = self._known.get(entry.series, (-1, -1e18))
            if version != entry.generation:
                return False
            return True if now - as_of <= self.check_s else None
        return now - entry.loaded < self.ttl_s

    def _get(self, store: Store, key: tuple[Any, ...]) -> _Entry | None:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            fresh = self._fresh(store, entry, now)
            if fresh is False:
                self._drop(key)
            if not fresh:
                return None
            self._entries.move_to_end(key)
            if entry.series is not None and self.versioned(store):
                if now - self._known[entry.series][1] >= self.check_s / 2:
                    self._check_later(store)
            elif (
                key[0] == "series"
                and not store.exclusive
                and key not in self._refreshing
                and now - entry.loaded >= self.ttl_s / 2
            ):
                self._refresh_later(store, key)
            return entry

    # -- series versions ---------------------------------------------------------------

    def _check_later(self, store: Store) -> None:
        """Check versions in the background (called holding ``_lock``)."""
        if self._check_queued:
            return
        if self._checker is None:
            self._checker = ThreadPoolExecutor(1, thread_name_prefix="bar-cache-check")
        self._check_queued = True

        def check() -> None:
            try:
                self.check_versions(store)
            except MarketLakeError as exc:  # requests past the bound check again and report
                log.warning("bar_cache_check_failed", error=exc.message)
            finally:
                with self._lock:
                    self._check_queued = False

        self._checker.submit(check)

    def check_versions(self, store: Store, *, older_than: float | None = None) -> None:
        """Read the versions of every cached series with one query (one caller at a time).

        With ``older_than`` (a monotonic time), nothing is read when every cached
        series was confirmed at or after it meanwhile (by the caller it waited for).
        Changed series are dropped and reloaded in the background.
        """
        with self._check_gate:
            with self._lock:
                keys = {e.series for e in self._entries.values() if e.series is not None}
                if older_than is not None and all(
                    self._known.get(k, (0, -1e18))[1] >= older_than for k in keys
                ):
                    return
            began = time.monotonic()
            versions = store.series_versions(sorted(keys)) if keys else {}
            self.checks += 1
            reload: list[tuple[Any, ...]] = []
            with self._lock:
                for k in list(self._known):
                    if k not in keys:
                        del self._known[k]
                for k in keys:
                    version = versions.get(k, 0)
                    old = self._known.get(k)
                    if old is not None and old[1] > began:
                        continue  # a load read it later than this check
                    self._known[k] = (version, began)
                    if old is not None and old[0] != version:
                        key = ("series", *k)
                        if key in self._entries and key not in self._refreshing:
                            reload.append(key)
                for key in reload:
                    self._refresh_later(store, key)

    def _confirm(self, store: Store, key: tuple[Any, ...]) -> None:
        """Before a request reads ``key`` in a thread: when its series' version was
        confirmed longer than ``check_s`` ago, check (or wait for the check running)."""
        if not self.versioned(store):
            return
        with self._lock:
            entry = self._entries.get(key)
            series = entry.series if entry is not None else None
            as_of = self._known.get(series, (0, -1e18))[1] if series is not None else None
        if as_of is not None and time.monotonic() - as_of > self.check_s:
            self.check_versions(store, older_than=time.monotonic() - self.check_s)

    def _refresh_later(self, store: Store, key: tuple[Any, ...]) -> None:
        """Reload series ``key`` in the background (called holding ``_lock``)."""
        if self._refresher is None:
            self._refresher = ThreadPoolExecutor(1, thread_name_prefix="bar-cache-refresh")
        self._refreshing.add(key)

        def refresh() -> None:
            try:
                with self._single_flight(key), self._loads:
                    self._load_series(store, key, key[1], key[2])
            except MarketLakeError as exc:  # the next request past the TTL retries and reports
                log.warning("bar_cache_refresh_failed", series=key[1:], error=exc.message)
            finally:
                with self._lock:
                    self._refreshing.discard(key)

        self._refresher.submit(refresh)

    def close(self) -> None:
        """Stop background refreshes and checks (queued ones are dropped)."""
        if self._refresher is not None:
            self._refresher.shutdown(wait=False, cancel_futures=True)
            self._refresher = None
        if self._checker is not None:
            self._checker.shutdown(wait=False, cancel_futures=True)
            self._checker = None

    def _put(
        self,
        key: tuple[Any, ...],
        value: Any,
        rows: int,
        generation: int,
        loaded: float | None = None,
        series: SeriesKey | None = None,
        confirmed: float | None = None,
    ) -> None:
        """Keep an entry; with ``confirmed`` (when the version ``generation`` of
        ``series`` was read) that version becomes the known one, unless a later read
        is known already."""
        with self._lock:
            if series is not None and confirmed is not None:
                old = self._known.get(series)
                if old is None or old[1] <= confirmed:
                    self._known[series] = (generation, confirmed)
            if key in self._entries:
                self._drop(key)
            self._entries[key] = _Entry(
                value, rows, generation, time.monotonic() if loaded is None else loaded, series
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
            self._confirm(store, key)
            entry = self._get(store, key)
        if entry is None:
            with self._single_flight(key):
                entry = self._get(store, key)  # loaded while this caller waited?
                if entry is None:
                    if not self._loads.acquire(blocking=False):
                        self.busy += 1  # every load slot taken: read the page from the store
                        return None
                    try:
                        return self._load_series(store, key, symbol, timeframe)
                    finally:
                        self._loads.release()
        return None if entry.value is _TOO_BIG else entry.value

    def _load_series(
        self, store: Store, key: tuple[Any, ...], symbol: str, timeframe: str
    ) -> Series | None:
        began = time.monotonic()
        series: SeriesKey | None = None
        if self.versioned(store):  # the version first: a write after it makes it stale
            series = (symbol, timeframe)
            generation = store.series_versions([series]).get(series, 0)
        else:
            generation = store.generation
        limit = min(self.max_rows, MAX_LIMIT)
        if store.count_bars(symbol, timeframe) > limit:
            found: Series | None = None
        else:
            page = store.read_bars(symbol, timeframe, limit=limit)
            found = (
                None if page.next_cursor is not None else Series.of(symbol, timeframe, page.table)
            )
        confirmed = began if series is not None else None
        if found is None:  # too long, or grew past the limit since the count
            self._put(key, _TOO_BIG, 0, generation, began, series, confirmed)
            return None
        self._put(key, found, found.rows, generation, began, series, confirmed)
        return found

    def stamp(self, store: Store, symbol: str, timeframe: str) -> int:
        """The marker to :meth:`remember` a value derived from the series with, taken
        before the series is read: the store's write counter, or the series' version."""
        if self.versioned(store):
            with self._lock:
                return self._known.get((symbol, timeframe), (-1, 0.0))[0]
        return store.generation

    def memo(self, store: Store, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        """``compute()``, remembered under ``key`` with the same freshness rule as series.

        Memos are small values (the symbol list, a latest price) that weigh no bars, so
        they are kept even when the bar cache is off (``max_rows`` 0): a request that
        misses the bar cache then costs one store query, not two."""
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
        self,
        store: Store,
        key: tuple[Any, ...],
        value: Any,
        *,
        generation: int,
        weight: int = 0,
        series: SeriesKey | None = None,
    ) -> None:
        """Keep ``value`` under ``key`` (as ``memo`` would), counting ``weight`` bars' worth
        of memory against ``max_rows``; ``generation`` is :meth:`stamp` (or the store's
        generation) taken before ``value`` was read. With ``series``, the value is
        derived from that series and as fresh as it is."""
        if self.enabled:
            versioned = series is not None and self.versioned(store)
            self._put(
                ("memo", *key), value, weight, generation, series=series if versioned else None
            )

    def peek_memo(self, store: Store, key: tuple[Any, ...]) -> tuple[bool, Any]:
        """``(True, value)`` when ``key`` is remembered and fresh, else ``(False, None)``."""
        entry = self._get(store, ("memo", *key))
        return (False, None) if entry is None else (True, entry.value)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._known.clear()
            self._rows = 0
