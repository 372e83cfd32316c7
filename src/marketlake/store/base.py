"""The ``Store`` contract: a narrow abstract core and conveniences written once on top.

A backend implements a handful of primitives (run SQL, fetch Arrow, write bars
and trades fast, keep its schema); everything else here (instruments, reads
with keyset cursors, latest bar, coverage, jobs, checkpoints, generic records
for the auxiliary tables) is portable SQL on those primitives.

SQL in this module uses ``?`` placeholders; backends translate them if their
driver wants another style. Table and column names come only from the
catalogue (:mod:`marketlake.store.catalogue`, the names of the tables of
:mod:`marketlake.store.tables`), never from user input.
"""

from __future__ import annotations

import base64
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal, TypeVar, overload

import pyarrow as pa

from marketlake.errors import ConflictError, InputError, NotFoundError, SchemaError
from marketlake.schema import (
    BAR_SCHEMA,
    TS_TYPE,
    Instrument,
    Timeframe,
    default_instrument,
    normalize_bars,
    normalize_symbol,
    parse_time,
    utcnow,
)
from marketlake.store.catalogue import COLUMNS, PRIMARY_KEYS
from marketlake.store.liveness import LIVE_STATUSES, Heartbeat, is_dead, this_owner
from marketlake.store.merge import Group, split_groups
from marketlake.timeseries.adjust import ACTION_SCHEMA

OnConflict = Literal["ignore", "replace"]
T = TypeVar("T")
MAX_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write did: new rows, exact duplicates skipped, conflicting rows."""

    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    replaced: int = 0

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.inserted + other.inserted,
            self.duplicates + other.duplicates,
            self.conflicts + other.conflicts,
            self.replaced + other.replaced,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "replaced": self.replaced,
        }


@dataclass(frozen=True, slots=True)
class BarPage:
    """One page of bars and the cursor for the next one (None at the end)."""

    table: pa.Table
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class Coverage:
    """First and last stored bar time and how many bars there are."""

    symbol: str
    timeframe: str
    first: datetime | None
    last: datetime | None
    count: int


@dataclass(slots=True)
class Job:
    """A recorded job: ingest, import, validation, aggregation …"""

    id: str
    kind: str
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    owner: str | None = None
    """``host:pid:start`` of the process that runs it."""
    heartbeat_at: datetime | None = None


def encode_cursor(symbol: str, ts: datetime) -> str:
    """An opaque keyset cursor for the row after (symbol, ts)."""
    raw = json.dumps([symbol, ts.isoformat()]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, datetime]:
    """Inverse of :func:`encode_cursor`; a damaged cursor is an input error."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        symbol, ts = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return str(symbol), parse_time(str(ts))
    except (ValueError, TypeError, InputError):
        raise InputError(
            f"cursor {cursor!r} is not valid; pass the next_cursor of a previous page",
            param="cursor",
        ) from None


def check_range(start: datetime | None, end: datetime | None) -> None:
    """Half-open ranges need ``start < end``."""
    if start is not None and end is not None and start >= end:
        raise InputError(
            f"start {start.isoformat()} must be before end {end.isoformat()} "
            "(ranges are half-open: start inclusive, end exclusive)",
            param="start",
        )


def check_on_conflict(on_conflict: str) -> None:
    """Only ``ignore`` and ``replace`` are valid conflict policies."""
    if on_conflict not in ("ignore", "replace"):
        raise InputError(
            f"on_conflict {on_conflict!r} must be 'ignore' (keep stored bars) or 'replace'",
            param="on_conflict",
        )


def check_keys(symbols: Sequence[str], timeframes: Sequence[str]) -> None:
    """Bars to write must carry canonical symbols (upper case) and timeframe strings."""
    for symbol in set(symbols):
        if normalize_symbol(symbol) != symbol:
            raise SchemaError(
                f"bar symbol {symbol!r} is not canonical; write "
                f"{normalize_symbol(symbol)!r} (normalize_bars does it)"
            )
    for timeframe in set(timeframes):
        if str(Timeframe.parse(timeframe)) != timeframe:
            raise SchemaError(
                f"bar timeframe {timeframe!r} is not canonical; write "
                f"{str(Timeframe.parse(timeframe))!r}"
            )


class Store(ABC):
    """Where bars, trades, instruments and the operational records live.

    Subclasses declare ``schemes`` (URI schemes they open) and implement the
    abstract primitives; see ``store/duckdb.py`` for the reference backend.
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    #: True when no other process can write while this object has the store open (an
    #: embedded DuckDB file): then :attr:`generation` is an exact change marker for caches.
    exclusive: ClassVar[bool] = False
    #: True when every write of bars bumps a per-series version in the store itself
    #: (PostgreSQL): then :meth:`series_versions` tells caches in other processes what
    #: changed, with one query.
    versioned: ClassVar[bool] = False

    def __init__(self, uri: str) -> None:
        self.uri = uri
        #: Counts writes made through this object; backends bump it on every write.
        self.generation = 0
        self._heartbeat = Heartbeat(self._touch_jobs)

    # -- the abstract core -------------------------------------------------------------

    @classmethod
    def supports_uri(cls, uri: str) -> bool:
        return any(uri.startswith(f"{scheme}:") for scheme in cls.schemes)

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it touched (or -1)."""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """Run a query and return its result as an Arrow table."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """A context in which ``execute`` calls commit together or not at all."""

    def atomically(self, work: Callable[[], T], what: str = "the transaction") -> T:
        """Run ``work`` in one transaction and return its result.

        A backend that can lose its connection (PostgreSQL) rolls back and runs ``work``
        again on a fresh connection after a transient failure, so ``work`` must leave
        nothing behind outside the store that a second run would repeat. The embedded
        store runs it once.
        """
        with self.transaction():
            return work()

    def serialized(self, name: str) -> AbstractContextManager[None]:
        """A transaction that holds a lock named ``name`` until it ends, for a check and
        a write that no unique key can make atomic (one writer per name at a time).

        The embedded store is one process holding the file, whose transactions are
        serialised already; a server backend overrides this with a real lock.
        """
        return self.transaction()

    @abstractmethod
    def write_bars(self, table: pa.Table, *, on_conflict: OnConflict = "ignore") -> WriteResult:
        """Write canonical bars idempotently on (symbol, timeframe, ts).

        Rows already stored with the same values are counted as duplicates and
        change nothing; rows with the same key but other values are counted as
        conflicts and left as stored, unless ``on_conflict="replace"``. The
        whole table is written in one transaction.
        """

    def write_bars_per_series(
        self, table: pa.Table, *, on_conflict: OnConflict = "ignore"
    ) -> dict[tuple[str, str], WriteResult]:
        """:meth:`write_bars`, with the result of each (symbol, timeframe) series apart.

        All series are written in one transaction (by :meth:`_write_series`).
        """
        check_on_conflict(on_conflict)
        table = table if table.schema.equals(BAR_SCHEMA) else normalize_bars(table)
        if table.num_rows == 0:
            return {}
        groups = split_groups(table, table.num_rows)
        assert groups is not None
        with self.transaction():
            return self._write_series(groups, on_conflict)

    def _write_series(
        self, groups: list[Group], on_conflict: OnConflict
    ) -> dict[tuple[str, str], WriteResult]:
        """Write (symbol, timeframe, rows) groups inside the caller's transaction. This
        default writes them one by one; a backend that can classify many series in one
        pass overrides it."""
        return {
            (symbol, timeframe): self.write_bars(rows, on_conflict=on_conflict)
            for symbol, timeframe, rows in groups
        }

    @abstractmethod
    def write_trades(self, table: pa.Table) -> WriteResult:
        """Write canonical trades idempotently on (source, symbol, trade_id)."""

    @abstractmethod
    def schema_version(self) -> int:
        """The schema version the store holds."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and files."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- instruments --------------------------------------------------------------------

    def add_instrument(self, instrument: Instrument, *, auto: bool = False) -> Instrument:
        """Register an instrument; an existing symbol is a :class:`ConflictError`.

        The check and the insert are one statement (``ON CONFLICT DO NOTHING``), so
        of two concurrent registrations of one symbol exactly one succeeds.
        """
        if not self._insert_instrument(instrument, auto=auto):
            raise ConflictError(
                f"instrument {instrument.symbol} exists already; use `instruments show` to "
                "see it or update it instead"
            )
        return instrument

    def _insert_instrument(self, instrument: Instrument, *, auto: bool = False) -> bool:
        """Insert the instrument unless its symbol is registered; True when inserted."""
        now = utcnow()
        row = {
            **instrument.model_dump(),
            "auto_registered": auto,
            "created_at": now,
            "updated_at": now,
        }
        return bool(self.insert_new("instruments", [row]))

    def put_instrument(self, instrument: Instrument) -> bool:
        """Create or replace an instrument atomically; True when it was created.

        Concurrent calls for one symbol never fail: one creates it, the others
        replace its fields (the last writer's fields stay).
        """
        for _ in range(5):  # a delete between the insert and the update: try again
            if self._insert_instrument(instrument):
                return True
            values = {**instrument.model_dump(), "auto_registered": False, "updated_at": utcnow()}
            if self.update_rows("instruments", {"symbol": instrument.symbol}, values):
                return False
        raise ConflictError(  # pragma: no cover - needs a delete racing five times
            f"instrument {instrument.symbol} was deleted and re-created while it was saved; "
            "send the request again"
        )

    def update_instrument(self, instrument: Instrument) -> Instrument:
        values = {**instrument.model_dump(), "auto_registered": False, "updated_at": utcnow()}
        if not self.update_rows("instruments", {"symbol": instrument.symbol}, values):
            raise NotFoundError(
                f"unknown symbol {instrument.symbol}; add it with `marketlake instruments add`"
            )
        return instrument

    @overload
    def instrument(self, symbol: str, *, missing_ok: Literal[False] = False) -> Instrument: ...

    @overload
    def instrument(self, symbol: str, *, missing_ok: bool) -> Instrument | None: ...

    def instrument(self, symbol: str, *, missing_ok: bool = False) -> Instrument | None:
        """The registered instrument; an unknown symbol raises :class:`NotFoundError`, or
        gives None with ``missing_ok``."""
        rows = self.select_rows("instruments", {"symbol": normalize_symbol(symbol)})
        if not rows:
            if missing_ok:
                return None
            raise NotFoundError(
                f"unknown symbol {normalize_symbol(symbol)}; list known ones with "
                "`marketlake instruments list`"
            )
        return _instrument(rows[0])

    def list_instruments(self) -> list[Instrument]:
        return [_instrument(row) for row in self.select_rows("instruments", order_by="symbol")]

    def delete_instrument(self, symbol: str, *, with_data: bool = False) -> None:
        symbol = normalize_symbol(symbol)
        with self.transaction():
            if not self.delete_rows("instruments", {"symbol": symbol}):
                raise NotFoundError(f"unknown symbol {symbol}")
            if with_data:
                self.delete_bars(symbol)
                self.execute("DELETE FROM trades WHERE symbol = ?", [symbol])

    def ensure_instruments(self, symbols: Sequence[str]) -> list[str]:
        """Register unknown symbols with defaults; return the ones that were new.

        Atomic: concurrent callers registering one new symbol both succeed, and the
        symbol is reported as new by exactly one of them.
        """
        known = {i.symbol for i in self.list_instruments()}
        wanted = [s for s in dict.fromkeys(normalize_symbol(s) for s in symbols) if s not in known]
        now = utcnow()
        inserted = self.insert_new(
            "instruments",
            [
                {
                    **default_instrument(symbol).model_dump(),
                    "auto_registered": True,
                    "created_at": now,
                    "updated_at": now,
                }
                for symbol in wanted
            ],
        )
        new = {key[0] for key in inserted}
        return [symbol for symbol in wanted if symbol in new]

    def auto_registered(self, symbols: Iterable[str] | None = None) -> set[str]:
        """The symbols registered with defaults when first seen, and not refined since
        (only those among ``symbols`` when given)."""
        rows = self.select_rows("instruments", {"auto_registered": True})
        found = {row["symbol"] for row in rows}
        if symbols is None:
            return found
        return found & {normalize_symbol(s) for s in symbols}

    # -- bars ---------------------------------------------------------------------------

    def read_bars(
        self,
        symbols: str | Sequence[str],
        timeframe: str | Timeframe,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> BarPage:
        """Bars of ``symbols`` in ``[start, end)``, ordered by (symbol, ts).

        With ``limit``, at most that many rows come back, and ``next_cursor``
        continues after the last one (keyset pagination: no OFFSET scans).
        Naive ``start``/``end`` mean UTC.
        """
        names = [symbols] if isinstance(symbols, str) else list(symbols)
        if not names:
            raise InputError("give at least one symbol", param="symbols")
        symbol_list = sorted({normalize_symbol(s) for s in names})
        tf = str(Timeframe.parse(timeframe))
        lo = parse_time(start, param="start") if start is not None else None
        hi = parse_time(end, param="end") if end is not None else None
        check_range(lo, hi)
        if limit is not None and not 1 <= limit <= MAX_LIMIT:
            raise InputError(f"limit {limit} must be between 1 and {MAX_LIMIT}", param="limit")
        after = decode_cursor(cursor) if cursor is not None else None
        fetch = None if limit is None else limit + 1
        table = self._select_bars(symbol_list, tf, lo, hi, fetch, after)
        if limit is None or table.num_rows <= limit:
            return BarPage(table)
        table = table.slice(0, limit)
        last = table.slice(limit - 1, 1).select(["symbol", "ts"]).to_pylist()[0]
        return BarPage(table, encode_cursor(last["symbol"], last["ts"]))

    def _select_bars(
        self,
        symbols: list[str],
        timeframe: str,
        start: datetime | None,
        end: datetime | None,
        limit: int | None,
        after: tuple[str, datetime] | None,
    ) -> pa.Table:
        """Bars ordered by (symbol, ts) after the key ``after``; portable SQL on ``bars``.

        Backends override this for speed; arguments are already checked.
        """
        where = [f"symbol IN ({', '.join('?' * len(symbols))})", "timeframe = ?"]
        params: list[Any] = [*symbols, timeframe]
        for clause, value in (("ts >= ?", start), ("ts < ?", end)):
            if value is not None:
                where.append(clause)
                params.append(value)
        if after is not None:
            where.append("(symbol > ? OR (symbol = ? AND ts > ?))")
            params += [after[0], after[0], after[1]]
        sql = f"SELECT * FROM bars WHERE {' AND '.join(where)} ORDER BY symbol, ts"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.query(sql, params).cast(BAR_SCHEMA)

    def iter_bars(
        self,
        symbols: str | Sequence[str],
        timeframe: str | Timeframe,
        start: datetime | None = None,
        end: datetime | None = None,
        batch_rows: int = 100_000,
    ) -> Iterator[pa.Table]:
        """Bars in batches of at most ``batch_rows``, for streaming large ranges."""
        cursor: str | None = None
        while True:
            page = self.read_bars(symbols, timeframe, start, end, limit=batch_rows, cursor=cursor)
            if page.table.num_rows:
                yield page.table
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def series_versions(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The version of each (symbol, timeframe) series in ``keys`` (0: never written
        since versions exist). A store that keeps no versions (``versioned`` False)
        answers an empty dict."""
        return {}

    def delete_bars(self, symbol: str, timeframe: str | Timeframe | None = None) -> int:
        """Delete the stored bars of a symbol (of one timeframe, or all); return how many."""
        symbol = normalize_symbol(symbol)
        if timeframe is None:
            return self.execute("DELETE FROM bars WHERE symbol = ?", [symbol])
        tf = str(Timeframe.parse(timeframe))
        return self.execute("DELETE FROM bars WHERE symbol = ? AND timeframe = ?", [symbol, tf])

    def latest_bar(self, symbol: str, timeframe: str | Timeframe) -> dict[str, Any] | None:
        """The newest bar of a symbol and timeframe as a dict, or None."""
        table = self.query(
            "SELECT * FROM bars WHERE symbol = ? AND timeframe = ? ORDER BY ts DESC LIMIT 1",
            [normalize_symbol(symbol), str(Timeframe.parse(timeframe))],
        )
        rows = table.to_pylist()
        return rows[0] if rows else None

    def coverage(self, symbol: str, timeframe: str | Timeframe) -> Coverage:
        """First and last bar time and the number of bars of a symbol and timeframe."""
        symbol = normalize_symbol(symbol)
        tf = str(Timeframe.parse(timeframe))
        row = self.query(
            "SELECT min(ts) AS first, max(ts) AS last, count(*) AS n FROM bars "
            "WHERE symbol = ? AND timeframe = ?",
            [symbol, tf],
        ).to_pylist()[0]
        return Coverage(symbol, tf, row["first"], row["last"], int(row["n"]))

    def bar_summary(self) -> list[dict[str, Any]]:
        """Per (symbol, timeframe): bar count, first and last time."""
        rows: list[dict[str, Any]] = self.query(
            "SELECT symbol, timeframe, count(*) AS bars, min(ts) AS first, max(ts) AS last "
            "FROM bars GROUP BY symbol, timeframe ORDER BY symbol, timeframe"
        ).to_pylist()
        return rows

    def count_bars(self, symbol: str | None = None, timeframe: str | None = None) -> int:
        where, params = _where({"symbol": symbol, "timeframe": timeframe})
        return int(self.query(f"SELECT count(*) AS n FROM bars{where}", params).to_pylist()[0]["n"])

    def read_trades(
        self,
        symbol: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
    ) -> pa.Table:
        sql = "SELECT * FROM trades WHERE symbol = ?"
        params: list[Any] = [normalize_symbol(symbol)]
        if start is not None:
            sql += " AND ts >= ?"
            params.append(start)
        if end is not None:
            sql += " AND ts < ?"
            params.append(end)
        sql += " ORDER BY ts, trade_id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.query(sql, params)

    # -- jobs and checkpoints --------------------------------------------------------

    def create_job(self, kind: str, params: dict[str, Any]) -> Job:
        """Record a pending job owned by this process (which keeps its heartbeat)."""
        now = utcnow()
        job = Job(
            id=uuid.uuid4().hex[:12],
            kind=kind,
            status="pending",
            params=params,
            created_at=now,
            owner=this_owner(),
            heartbeat_at=now,
        )
        self.insert_row(
            "jobs",
            {
                "id": job.id,
                "kind": kind,
                "status": job.status,
                "params": json.dumps(params, default=str),
                "summary": "{}",
                "created_at": job.created_at,
                "owner": job.owner,
                "heartbeat_at": now,
            },
        )
        self._heartbeat.add(job.id)
        return job

    def update_job(
        self,
        job_id: str,
        *,
        status: str | None = None,
        summary: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Change a job. ``status="running"`` makes this process its owner; a final
        status ends its heartbeat."""
        values: dict[str, Any] = {}
        if status is not None:
            values["status"] = status
            if status == "running":
                values["started_at"] = values["heartbeat_at"] = utcnow()
                values["owner"] = this_owner()
                self._heartbeat.add(job_id)
            elif status not in LIVE_STATUSES:
                values["finished_at"] = utcnow()
                self._heartbeat.discard(job_id)
        if summary is not None:
            values["summary"] = json.dumps(summary, default=str)
        if error is not None:
            values["error"] = error
        if not self.update_rows("jobs", {"id": job_id}, values):
            raise NotFoundError(f"unknown job {job_id}")

    def _touch_jobs(self, job_ids: list[str]) -> None:
        self.execute(
            f"UPDATE jobs SET heartbeat_at = ? WHERE id IN ({', '.join('?' * len(job_ids))}) "
            "AND status IN ('pending', 'running')",
            [utcnow(), *job_ids],
        )

    def reap_jobs(self) -> list[str]:
        """Record the jobs whose owner is gone as ``interrupted`` (their summary keeps
        what they committed); return their ids."""
        rows = self.select_rows("jobs", {"status": "running"}) + self.select_rows(
            "jobs", {"status": "pending"}
        )
        now = utcnow()
        dead = [r["id"] for r in rows if is_dead(r["owner"], r["heartbeat_at"], now)]
        for job_id in dead:
            self.update_rows(
                "jobs",
                {"id": job_id},
                {
                    "status": "interrupted",
                    "finished_at": now,
                    "error": "the process running the job stopped (killed or crashed)",
                },
            )
        return dead

    def get_job(self, job_id: str) -> Job:
        rows = self.select_rows("jobs", {"id": job_id})
        if not rows:
            raise NotFoundError(f"unknown job {job_id}; list jobs with `marketlake jobs list`")
        return _job(rows[0])

    def list_jobs(self, limit: int = 50, kind: str | None = None) -> list[Job]:
        rows = self.select_rows(
            "jobs",
            {"kind": kind} if kind else None,
            order_by="created_at",
            descending=True,
            limit=limit,
        )
        return [_job(row) for row in rows]

    def set_checkpoint(
        self,
        provider: str,
        symbol: str,
        timeframe: str,
        last_ts: datetime,
        job_id: str | None = None,
    ) -> None:
        self.set_checkpoints(provider, timeframe, {symbol: last_ts}, job_id)

    def set_checkpoints(
        self, provider: str, timeframe: str, last: dict[str, datetime], job_id: str | None = None
    ) -> None:
        """Set the checkpoints of several symbols (symbol → last bar time) at once."""
        if not last:
            return
        symbols = {normalize_symbol(symbol): ts for symbol, ts in last.items()}
        now = utcnow()
        self.upsert_rows(
            "checkpoints",
            [
                {
                    "provider": provider,
                    "symbol": symbol,
                    "timeframe": timeframe,
                    "last_ts": ts,
                    "job_id": job_id,
                    "updated_at": now,
                }
                for symbol, ts in symbols.items()
            ],
            key=("provider", "symbol", "timeframe"),
        )

    def get_checkpoint(self, provider: str, symbol: str, timeframe: str) -> datetime | None:
        rows = self.select_rows(
            "checkpoints",
            {"provider": provider, "symbol": normalize_symbol(symbol), "timeframe": timeframe},
        )
        return rows[0]["last_ts"] if rows else None

    # -- named operations: series, prices, trades -----------------------------------

    def ping(self) -> None:
        """Run one trivial parameterised query: raises :class:`StoreError` when the store
        does not answer (and warms up a driver that loads lazily on its first parameters)."""
        self.query("SELECT ? AS ok", [1])

    def newest_closes(self, symbol: str, timeframe: str | Timeframe, limit: int) -> pa.Table:
        """The newest ``limit`` bars of a series as columns ``ts`` and ``close``, oldest first."""
        return self.query(
            "SELECT * FROM (SELECT ts, close FROM bars WHERE symbol = ? AND timeframe = ? "
            "ORDER BY ts DESC LIMIT ?) AS newest ORDER BY ts",
            [normalize_symbol(symbol), str(Timeframe.parse(timeframe)), int(limit)],
        )

    def latest_bar_times(self, symbol: str) -> dict[str, datetime]:
        """The time of the newest stored bar of each timeframe of ``symbol``."""
        rows = self.query(
            "SELECT timeframe, max(ts) AS ts FROM bars WHERE symbol = ? GROUP BY timeframe",
            [normalize_symbol(symbol)],
        ).to_pylist()
        return {str(row["timeframe"]): row["ts"] for row in rows}

    def stored_timeframes(self, symbol: str) -> list[str]:
        """The timeframes of which bars of ``symbol`` are stored."""
        table = self.query(
            "SELECT DISTINCT timeframe FROM bars WHERE symbol = ?", [normalize_symbol(symbol)]
        )
        return sorted(str(t) for t in table.column("timeframe").to_pylist())

    def bar_times(
        self, symbols: Sequence[str], timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> pa.Table:
        """Columns ``symbol`` and ``ts`` of the bars of ``symbols`` in ``[start, end)``,
        ordered by (symbol, ts): what gap scans need, without the prices."""
        names = sorted({normalize_symbol(s) for s in symbols})
        if not names:
            return pa.table({"symbol": pa.array([], pa.string()), "ts": pa.array([], TS_TYPE)})
        return self.query(
            "SELECT symbol, ts FROM bars WHERE timeframe = ? "
            f"AND symbol IN ({', '.join('?' * len(names))}) AND ts >= ? AND ts < ? "
            "ORDER BY symbol, ts",
            [str(Timeframe.parse(timeframe)), *names, start, end],
        )

    def close_before(
        self, symbol: str, timeframe: str | Timeframe, when: datetime, *, within_days: int = 30
    ) -> float | None:
        """The close of the last stored bar before ``when`` (at most ``within_days`` before)."""
        found = self.query(
            "SELECT close FROM bars WHERE symbol = ? AND timeframe = ? AND ts < ? AND ts >= ? "
            "ORDER BY ts DESC LIMIT 1",
            [
                normalize_symbol(symbol),
                str(Timeframe.parse(timeframe)),
                when,
                when - timedelta(days=within_days),
            ],
        ).to_pylist()
        return float(found[0]["close"]) if found else None

    def close_at(self, symbol: str, timeframe: str | Timeframe, ts: datetime) -> float | None:
        """The close of the stored bar of a series at ``ts``, or None."""
        found = self.query(
            "SELECT close FROM bars WHERE symbol = ? AND timeframe = ? AND ts = ?",
            [normalize_symbol(symbol), str(Timeframe.parse(timeframe)), ts],
        ).to_pylist()
        return float(found[0]["close"]) if found else None

    def main_source(self, symbol: str, timeframe: str | Timeframe) -> str | None:
        """The ``source`` most stored bars of a series came from, or None without bars."""
        rows = self.query(
            "SELECT source, count(*) AS n FROM bars WHERE symbol = ? AND timeframe = ? "
            "GROUP BY source ORDER BY n DESC LIMIT 1",
            [normalize_symbol(symbol), str(Timeframe.parse(timeframe))],
        ).to_pylist()
        return str(rows[0]["source"]) if rows else None

    def latest_trade(self, symbol: str) -> dict[str, Any] | None:
        """The newest stored trade of ``symbol`` as a dict, or None."""
        rows = self.query(
            "SELECT * FROM trades WHERE symbol = ? ORDER BY ts DESC LIMIT 1",
            [normalize_symbol(symbol)],
        ).to_pylist()
        return rows[0] if rows else None

    # -- named operations: corporate actions -----------------------------------------

    def write_actions(self, table: pa.Table, *, replace: bool = False) -> int:
        """Store corporate actions (:data:`ACTION_SCHEMA` columns) idempotently on
        (symbol, ts, kind); return how many are new or changed.

        An action stored already keeps its value unless ``replace`` is set.
        """
        rows = table.to_pylist()
        with self.transaction():
            new = set(self.insert_new("corporate_actions", rows))
            written = len(new)
            for row in rows:
                key = {"symbol": row["symbol"], "ts": row["ts"], "kind": row["kind"]}
                if not replace or (row["symbol"], row["ts"], row["kind"]) in new:
                    continue
                found = self.select_rows("corporate_actions", key)
                if found and found[0]["value"] != row["value"]:
                    self.update_rows("corporate_actions", key, row)
                    written += 1
        return written

    def read_actions(
        self,
        symbols: str | Sequence[str],
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        kind: str | None = None,
    ) -> pa.Table:
        """Corporate actions of ``symbols`` with ex-dates in ``[start, end)`` (of one
        ``kind`` when given), ordered by (symbol, ts, kind), as :data:`ACTION_SCHEMA`."""
        listed = [symbols] if isinstance(symbols, str) else symbols
        names = sorted({normalize_symbol(s) for s in listed})
        if not names:
            return ACTION_SCHEMA.empty_table()
        sql = (
            "SELECT symbol, ts, kind, value, source FROM corporate_actions "
            f"WHERE symbol IN ({', '.join('?' * len(names))})"
        )
        params: list[Any] = list(names)
        for clause, value in (("kind = ?", kind), ("ts >= ?", start), ("ts < ?", end)):
            if value is not None:
                sql += f" AND {clause}"
                params.append(value)
        return self.query(sql + " ORDER BY symbol, ts, kind", params).cast(ACTION_SCHEMA)

    # -- named operations: live metrics and alerts -----------------------------------

    def latest_metrics(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """The stored metric values (symbol, name, ts, value), of one symbol or all, by symbol."""
        where = {"symbol": normalize_symbol(symbol)} if symbol else None
        return self.select_rows("metrics", where, order_by="symbol")

    def write_metrics(self, rows: Sequence[tuple[str, str, datetime, Any]]) -> None:
        """Store the latest value of metrics: ``(symbol, name, ts, value)`` rows, one kept
        per symbol and name (the newer write wins)."""
        if not rows:
            return
        values_sql = ", ".join(["(?, ?, ?, ?)"] * len(rows))
        self.execute(
            f"INSERT INTO metrics (symbol, name, ts, value) VALUES {values_sql} "
            "ON CONFLICT (symbol, name) DO UPDATE SET ts = excluded.ts, value = excluded.value",
            [v for row in rows for v in row],
        )

    def add_alerts(self, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        """Insert alert rows (all with the same columns) whose ``id`` is not stored yet;
        return the ids inserted, so a replayed alert is stored and announced once."""
        inserted: list[str] = []
        chunk = 200
        for i in range(0, len(rows), chunk):
            part = rows[i : i + chunk]
            columns = list(part[0])
            row_sql = f"({', '.join('?' * len(columns))})"
            inserted += (
                self.query(
                    f"INSERT INTO alerts ({', '.join(columns)}) "
                    f"VALUES {', '.join([row_sql] * len(part))} "
                    "ON CONFLICT (id) DO NOTHING RETURNING id",
                    [row[c] for row in part for c in columns],
                )
                .column("id")
                .to_pylist()
            )
        return inserted

    def last_alert_per_rule(self, symbol: str) -> list[dict[str, Any]]:
        """For each rule that fired on ``symbol``: its newest alert's ``ts`` and ``seq``."""
        rows: list[dict[str, Any]] = self.query(
            "SELECT rule_id, max(ts) AS ts, max(seq) AS seq FROM alerts WHERE symbol = ? "
            "GROUP BY rule_id",
            [symbol],
        ).to_pylist()
        return rows

    def read_alerts(
        self,
        *,
        symbol: str | None = None,
        rule_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Stored alerts, newest first, filtered by symbol, rule and ``[start, end)``."""
        check_range(start, end)
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for clause, value in (
            ("symbol = ?", normalize_symbol(symbol) if symbol else None),
            ("rule_id = ?", rule_id or None),
            ("ts >= ?", start),
            ("ts < ?", end),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        rows: list[dict[str, Any]] = self.query(
            f"SELECT * FROM alerts WHERE {' AND '.join(where)} "
            f"ORDER BY ts DESC, id LIMIT {int(limit)}",
            params,
        ).to_pylist()
        return rows

    def alert_rules(self) -> list[dict[str, Any]]:
        """The alert rules stored through the API (id, definition JSON, created_at), by id."""
        return self.select_rows("alert_rules", order_by="id")

    def add_alert_rule(self, rule_id: str, definition: str) -> bool:
        """Store a rule's JSON definition; False (and nothing written) when the id is taken."""
        row = {"id": rule_id, "definition": definition, "created_at": utcnow()}
        return bool(self.insert_new("alert_rules", [row]))

    def delete_alert_rule(self, rule_id: str) -> bool:
        """Remove a stored rule; False when there was none with this id."""
        return bool(self.delete_rows("alert_rules", {"id": rule_id}))

    # -- named operations: API keys --------------------------------------------------

    def add_api_key(
        self, key_id: str, *, name: str, key_hash: str, scopes: str, created_at: datetime
    ) -> None:
        """Record a new, active API key (only the hash of its secret)."""
        self.insert_row(
            "api_keys",
            {
                "id": key_id,
                "name": name,
                "prefix": key_id,
                "hash": key_hash,
                "scopes": scopes,
                "created_at": created_at,
                "revoked_at": None,
            },
        )

    def api_keys(
        self, *, key_id: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        """Stored API keys (with their hash), oldest first; only those with the given id or
        name when either is set."""
        return self.select_rows("api_keys", {"id": key_id, "name": name}, order_by="created_at")

    def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        """Mark a key revoked at ``at``; False when no key has this id."""
        return bool(self.update_rows("api_keys", {"id": key_id}, {"revoked_at": at}))

    # -- named operations: backtests -------------------------------------------------

    def add_backtest(
        self,
        backtest_id: str,
        *,
        params: str,
        stats: str,
        trades: str | None,
        equity: str | None,
        created_at: datetime,
    ) -> None:
        """Record a finished backtest; the payloads are JSON text."""
        self.insert_row(
            "backtests",
            {
                "id": backtest_id,
                "status": "succeeded",
                "params": params,
                "stats": stats,
                "trades": trades,
                "equity": equity,
                "error": None,
                "created_at": created_at,
                "finished_at": created_at,
            },
        )

    def backtest(self, backtest_id: str) -> dict[str, Any] | None:
        """A stored backtest row, or None."""
        rows = self.select_rows("backtests", {"id": backtest_id})
        return rows[0] if rows else None

    def backtests(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest stored backtest rows."""
        return self.select_rows("backtests", order_by="created_at", descending=True, limit=limit)

    # -- named operations: quality reports -------------------------------------------

    def add_quality_report(
        self,
        report_id: str,
        *,
        job_id: str | None,
        scope: str,
        summary: str,
        findings: Sequence[dict[str, Any]],
    ) -> None:
        """Record a report (``scope`` and ``summary`` as JSON text) and its findings (rows
        of ``quality_findings``) in one transaction."""
        with self.transaction():
            self.insert_row(
                "quality_reports",
                {
                    "id": report_id,
                    "job_id": job_id,
                    "created_at": utcnow(),
                    "scope": scope,
                    "summary": summary,
                },
            )
            self.insert_rows("quality_findings", findings)

    def quality_reports(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The stored report rows, newest first (all of them without ``limit``)."""
        return self.select_rows(
            "quality_reports", order_by="created_at", descending=True, limit=limit
        )

    def quality_report(self, report_id: str) -> dict[str, Any] | None:
        """A stored report row, or None."""
        rows = self.select_rows("quality_reports", {"id": report_id})
        return rows[0] if rows else None

    def quality_findings(
        self,
        report_id: str,
        *,
        severity: str | None = None,
        order: Literal["series", "time"] = "series",
    ) -> list[dict[str, Any]]:
        """The finding rows of a report (of one severity when given), ordered by
        (symbol, timeframe, ts) or, with ``order="time"``, by ts."""
        by = "symbol, timeframe, ts" if order == "series" else "ts"
        where, params = _where({"report_id": report_id, "severity": severity})
        rows: list[dict[str, Any]] = self.query(
            f"SELECT * FROM quality_findings{where} ORDER BY {by}",
            params,
        ).to_pylist()
        return rows

    def finding_counts(self) -> list[dict[str, Any]]:
        """How many findings of each (rule, severity) are stored: rows rule, severity, n."""
        rows: list[dict[str, Any]] = self.query(
            "SELECT rule, severity, count(*) AS n FROM quality_findings GROUP BY rule, severity"
        ).to_pylist()
        return rows

    # -- generic records of the auxiliary tables ------------------------------------

    def insert_row(self, table: str, values: dict[str, Any]) -> None:
        columns = _columns(table, values)
        self.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [values[c] for c in columns],
        )

    def insert_rows(self, table: str, rows: Sequence[dict[str, Any]], *, chunk: int = 200) -> None:
        """Insert many rows with the same keys, ``chunk`` rows per statement."""
        if not rows:
            return
        for sql, params in self._insert_statements(table, rows, _columns(table, rows[0]), chunk):
            self.execute(sql, params)

    def insert_new(
        self, table: str, rows: Sequence[dict[str, Any]], *, chunk: int = 200
    ) -> list[tuple[Any, ...]]:
        """Insert the rows whose primary key is not stored yet, atomically (``INSERT …
        ON CONFLICT DO NOTHING``); return the keys of the rows inserted.

        A row a concurrent writer stored first is skipped, never an error: this is
        how registrations and other create-if-missing writes stay race-free.
        """
        if not rows:
            return []
        key = self._key_of(table)
        columns = _columns(table, rows[0])
        target = ", ".join(f'"{c}"' for c in key)
        inserted: list[tuple[Any, ...]] = []
        for sql, params in self._insert_statements(table, rows, columns, chunk):
            found = self.query(
                f"{sql} ON CONFLICT ({target}) DO NOTHING RETURNING {target}", params
            )
            self.generation += 1
            inserted += list(zip(*(found.column(c).to_pylist() for c in key), strict=True))
        return inserted

    def upsert_rows(
        self,
        table: str,
        rows: Sequence[dict[str, Any]],
        *,
        key: Sequence[str],
        chunk: int = 200,
    ) -> None:
        """Insert or replace rows on ``key`` (a unique key of ``table``), atomically:
        one ``INSERT … ON CONFLICT (key) DO UPDATE`` per chunk of rows."""
        if not rows:
            return
        columns = _columns(table, rows[0])
        _columns(table, dict.fromkeys(key))
        target = ", ".join(f'"{c}"' for c in key)
        sets = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in key)
        action = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
        for sql, params in self._insert_statements(table, rows, columns, chunk):
            self.execute(f"{sql} ON CONFLICT ({target}) {action}", params)

    @staticmethod
    def _key_of(table: str) -> list[str]:
        if table not in PRIMARY_KEYS:
            raise ValueError(f"unknown table {table!r}")
        return list(PRIMARY_KEYS[table])

    @staticmethod
    def _insert_statements(
        table: str, rows: Sequence[dict[str, Any]], columns: list[str], chunk: int
    ) -> Iterator[tuple[str, list[Any]]]:
        quoted = ", ".join(f'"{c}"' for c in columns)  # quality_findings has a "values" column
        one = f"({', '.join('?' * len(columns))})"
        for lo in range(0, len(rows), chunk):
            part = rows[lo : lo + chunk]
            yield (
                f"INSERT INTO {table} ({quoted}) VALUES {', '.join([one] * len(part))}",
                [row[c] for row in part for c in columns],
            )

    def update_rows(self, table: str, where: dict[str, Any], values: dict[str, Any]) -> int:
        columns = _columns(table, values)
        _columns(table, where)
        clause, params = _where(where)
        sets = ", ".join(f"{c} = ?" for c in columns)
        return self.execute(
            f"UPDATE {table} SET {sets}{clause}", [values[c] for c in columns] + params
        )

    def delete_rows(self, table: str, where: dict[str, Any]) -> int:
        _columns(table, where)
        clause, params = _where(where)
        return self.execute(f"DELETE FROM {table}{clause}", params)

    def select_rows(
        self,
        table: str,
        where: dict[str, Any] | None = None,
        *,
        order_by: str | None = None,
        descending: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        _columns(table, where or {})
        clause, params = _where(where or {})
        sql = f"SELECT * FROM {table}{clause}"
        if order_by is not None:
            _columns(table, {order_by: None})
            sql += f" ORDER BY {order_by}{' DESC' if descending else ''}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows: list[dict[str, Any]] = self.query(sql, params).to_pylist()
        return rows


def _columns(table: str, values: dict[str, Any]) -> list[str]:
    if table not in COLUMNS:
        raise ValueError(f"unknown table {table!r}")
    known = COLUMNS[table]
    unknown = [c for c in values if c not in known]
    if unknown:
        raise ValueError(f"table {table!r} has no column(s) {unknown}")
    return list(values)


def _where(where: dict[str, Any]) -> tuple[str, list[Any]]:
    parts = [(c, v) for c, v in where.items() if v is not None]
    if not parts:
        return "", []
    return " WHERE " + " AND ".join(f"{c} = ?" for c, _ in parts), [v for _, v in parts]


def _instrument(row: dict[str, Any]) -> Instrument:
    return Instrument(**{k: row[k] for k in Instrument.model_fields})


def _job(row: dict[str, Any]) -> Job:
    """A job as stored, except that a live status whose owner is gone reads as
    ``interrupted`` (the store records it so at the next :meth:`Store.reap_jobs`)."""
    status, error = row["status"], row["error"]
    if status in LIVE_STATUSES and is_dead(row.get("owner"), row.get("heartbeat_at"), utcnow()):
        status = "interrupted"
        error = error or "the process running the job stopped (killed or crashed)"
    return Job(
        id=row["id"],
        kind=row["kind"],
        status=status,
        params=json.loads(row["params"] or "{}"),
        summary=json.loads(row["summary"] or "{}"),
        error=error,
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        owner=row.get("owner"),
        heartbeat_at=row.get("heartbeat_at"),
    )
