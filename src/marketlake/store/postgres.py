"""The server store: PostgreSQL (TimescaleDB when present) through a psycopg 3 pool.

Writes of bars never go through a staging table on the server. Each batch is
one transaction that

1. takes transaction-scoped advisory locks on the batch's (symbol, timeframe)
   series, in sorted order, so that concurrent writers of the same series
   queue up instead of racing (and cannot deadlock on each other);
2. reads the stored bars of the batch's series and time range back with a
   binary ``COPY ... TO STDOUT`` (usually none, when appending);
3. classifies every incoming row as new, duplicate or conflicting in NumPy on
   the client, with the embedded store's code (:mod:`marketlake.store.merge`), and
4. sends only the new rows with a binary ``COPY ... FROM STDIN`` straight into
   the partitioned table (the unique key on (symbol, timeframe, ts) stays as
   the safety net), and with ``on_conflict="replace"`` updates the changed ones.

A batch that fails for a transient reason (connection lost, deadlock,
serialisation failure, a unique violation from a writer outside MarketLake)
is rolled back entirely and retried on a fresh connection. Reads of bars and
trades use the same binary COPY and are decoded into Arrow with NumPy
(:mod:`marketlake.store.pgcopy`); no Python object is built per row.

The store refuses to open a schema that Alembic has not migrated to this
version: ``marketlake migrate`` applies the migrations.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any, ClassVar, TypeVar

import psycopg
import pyarrow as pa
from psycopg_pool import ConnectionPool, PoolTimeout
from sqlalchemy import BigInteger, DateTime, Double, String, Table, Text

from marketlake.errors import StoreError, StoreVersionError
from marketlake.schema import (
    BAR_SCHEMA,
    TRADE_SCHEMA,
    TS_TYPE,
    Timeframe,
    constant_column,
    normalize_bars,
    normalize_symbol,
    normalize_trades,
)
from marketlake.store.base import (
    OnConflict,
    Store,
    WriteResult,
    check_keys,
    check_on_conflict,
)
from marketlake.store.merge import split_groups, ts_micros
from marketlake.store.pgconn import PgOptions, parse_uri, probe, version_of
from marketlake.store.pgcopy import CopyFormatError, FastSelect, decode_rows
from marketlake.store.pgschema import months_of, partition_ddl
from marketlake.store.pgwrite import (
    Connection,
    apply_plan,
    batch_months,
    bump_versions,
    copy_out,
    first_trades,
    insert_new_trades,
    plan_bars,
    prepare_groups,
    stored_bars,
)
from marketlake.store.tables import SCHEMA_VERSION, TABLES

T = TypeVar("T")
_SERIES = FastSelect(pa.schema([f for f in BAR_SCHEMA if f.name not in ("symbol", "timeframe")]))
_FAST_SELECT_RE = re.compile(
    r"^SELECT \* FROM (bars|trades)((?: WHERE | ORDER BY )[^;]*)?$", re.DOTALL
)
_PARTITION_RE = re.compile(r"^(bars|trades)_p(\d{4})_(\d{2})$")
_LOCK_BUCKETS = 64
_RETRYABLE = (psycopg.OperationalError, psycopg.errors.UniqueViolation)
_OID_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int64(),
    23: pa.int64(),
    25: pa.string(),
    19: pa.string(),
    1043: pa.string(),
    700: pa.float64(),
    701: pa.float64(),
    1184: TS_TYPE,
    1114: pa.timestamp("us"),
}


def _pg(sql: str) -> str:
    """Base-class SQL uses ``?`` placeholders; psycopg wants ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


def _arrow_schema(table: Table) -> pa.Schema | None:
    """The Arrow schema of a catalogue table, or None if a column type has no fast path."""
    fields = []
    for column in table.columns:
        kind = column.type
        if isinstance(kind, (String, Text)):
            arrow: pa.DataType = pa.string()
        elif isinstance(kind, Double):
            arrow = pa.float64()
        elif isinstance(kind, BigInteger):
            arrow = pa.int64()
        elif isinstance(kind, DateTime) and kind.timezone:
            arrow = TS_TYPE
        else:
            return None
        fields.append(pa.field(column.name, arrow, nullable=bool(column.nullable)))
    return pa.schema(fields)


def _signed(value: int) -> int:
    return value - 2**32 if value >= 2**31 else value


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


class PostgresStore(Store):
    """A :class:`Store` in a PostgreSQL database (one schema of it)."""

    schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgres")
    versioned: ClassVar[bool] = True

    def __init__(
        self, uri: str, *, connect_timeout_s: float = 5.0, pool_timeout_s: float = 30.0
    ) -> None:
        super().__init__(uri)
        self.options: PgOptions = parse_uri(uri)
        self._timeout = pool_timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._partitions: set[tuple[str, date]] = set()
        first = probe(self.options, connect_timeout_s)
        try:
            self._check_version(first)
            self.partitioned = self._is_partitioned(first)
        finally:
            first.close()
        # A broken pooled connection is replaced at once (see _checkout); the pool's
        # warning for each one it discards would only repeat what happened.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        self._pool = ConnectionPool(
            self.options.conninfo,
            kwargs=self.options.connect_kwargs(),
            min_size=self.options.pool_min,
            max_size=self.options.pool_max,
            open=True,
            timeout=pool_timeout_s,
            name=f"marketlake-{self.options.schema}",
        )
        self._fast = {
            name: FastSelect(schema)
            for name in ("bars", "trades")
            if (schema := _arrow_schema(TABLES[name])) is not None
        }

    # -- schema version --------------------------------------------------------------

    def _check_version(self, conn: Connection) -> None:
        version = version_of(conn, self.options.schema)
        where = f"schema {self.options.schema} of {self.options.display}"
        if version == SCHEMA_VERSION:
            return
        if version == 0:
            raise StoreVersionError(
                f"{where} has no MarketLake tables yet: run `marketlake "
                f"migrate --store {self.options.display}` first"
            )
        if version > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{where} has schema version {version}, newer than this "
                f"MarketLake's {SCHEMA_VERSION}: upgrade MarketLake"
            )
        raise StoreVersionError(
            f"{where} has schema version {version}, this MarketLake needs "
            f"{SCHEMA_VERSION}: run `marketlake migrate --store "
            f"{self.options.display}`"
        )

    def schema_version(self) -> int:
        return self._statement(lambda conn: version_of(conn, self.options.schema))

    def _is_partitioned(self, conn: Connection) -> bool:
        row = conn.execute(
            "SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = 'bars'",
            [self.options.schema],
        ).fetchone()
        return bool(row and row[0])

    # -- connections and transactions -------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate driver errors into :class:`StoreError` once, here."""
        try:
            yield
        except PoolTimeout:
            raise StoreError(
                f"no connection to PostgreSQL at {self.options.where} within "
                f"{self._timeout:g} s: the server is down or every pooled connection is busy "
                f"(pool_max={self.options.pool_max})"
            ) from None
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL: {_one_line(exc)}") from exc

    @contextmanager
    def _checkout(self) -> Iterator[Connection]:
        """A pooled connection that works, as ``ConnectionPool.connection()`` gives it.

        Each connection is checked (one empty query) when it is taken. A broken one —
        ended by ``pg_terminate_backend``, a failover or a restart — is discarded at
        once (the pool opens a replacement in the background) and the next one is
        taken without waiting: the pool's own ``check`` sleeps 1, 2, 4 … s between two
        broken connections and runs out of its 30 s after five of them.
        """
        conn = self._healthy()
        try:
            with conn:
                yield conn
        finally:
            self._pool.putconn(conn)

    def _healthy(self) -> Connection:
        deadline = time.monotonic() + self._timeout
        while True:
            conn = self._pool.getconn(timeout=max(0.001, deadline - time.monotonic()))
            try:
                ConnectionPool.check_connection(conn)
            except psycopg.Error:
                self._pool.putconn(conn)  # closed or bad: the pool discards and replaces it
                if time.monotonic() >= deadline:
                    raise PoolTimeout() from None
                continue
            return conn

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        current = getattr(self._local, "conn", None)
        if current is not None:
            with self._errors():
                yield current
            return
        with self._errors(), self._checkout() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        with self._errors(), self._checkout() as conn, conn.transaction():
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    def atomically(self, work: Callable[[], T], what: str = "the transaction") -> T:
        """Run ``work`` in one transaction; after a transient failure (connection lost,
        deadlock, serialisation failure) roll back and run it again on a fresh
        connection, ``write_retries`` times. Inside a caller's transaction it runs once:
        the caller's own retry covers it."""
        if getattr(self._local, "conn", None) is not None:
            return work()

        def attempt() -> T:
            with self.transaction():
                return work()

        return self._with_retries(attempt, what, psycopg.OperationalError)

    def _with_retries(
        self,
        run: Callable[[], T],
        what: str,
        retryable: type[BaseException] | tuple[type[BaseException], ...],
    ) -> T:
        """``run``, again after a :class:`StoreError` caused by ``retryable`` (jittered
        backoff; ``write_retries`` + 1 attempts in all)."""
        attempts = self.options.write_retries + 1
        for attempt in range(attempts):
            try:
                return run()
            except StoreError as exc:
                cause = exc.__cause__
                if not isinstance(cause, retryable) or attempt == attempts - 1:
                    if isinstance(cause, retryable):
                        raise StoreError(
                            f"{what} failed {attempts} times ({_one_line(cause)}); "
                            "nothing of this batch was written"
                        ) from cause
                    raise
                time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def serialized(self, name: str) -> Iterator[None]:
        with self.transaction(), self._connection() as conn:
            space = _signed(_crc(f"marketlake:{self.options.schema}:serialized"))
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", [space, _signed(_crc(name))])
            yield

    def close(self) -> None:
        self._heartbeat.stop()
        self._pool.close()

    # -- primitives ----------------------------------------------------------------

    def _statement(self, run: Callable[[Connection], T]) -> T:
        """One statement: in the caller's transaction, or on its own connection, run again
        on a fresh one when the connection was lost (one statement outside a transaction
        that failed is rolled back, so running it again is safe)."""
        if getattr(self._local, "conn", None) is not None:
            with self._connection() as conn:
                return run(conn)

        def attempt() -> T:
            with self._connection() as conn:
                return run(conn)

        return self._with_retries(attempt, "the statement", psycopg.OperationalError)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._statement(lambda conn: conn.execute(_pg(sql), list(params)).rowcount)

    def query(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        return self._statement(lambda conn: self._query(conn, sql, params))

    def _query(self, conn: Connection, sql: str, params: Sequence[Any]) -> pa.Table:
        match = _FAST_SELECT_RE.match(sql)
        if match is not None and match.group(1) in self._fast:
            spec = self._fast[match.group(1)]
            statement = f"SELECT {spec.select_list()} FROM {match.group(1)}{match.group(2) or ''}"
            try:
                return decode_rows(copy_out(conn, _pg(statement), params), spec)
            except CopyFormatError:
                pass  # a value the binary layout cannot carry: take the general path
        cursor = conn.execute(_pg(sql), list(params))
        return _rows_to_arrow(cursor.description or [], cursor.fetchall())

    def _select_bars(
        self,
        symbols: list[str],
        timeframe: str,
        start: datetime | None,
        end: datetime | None,
        limit: int | None,
        after: tuple[str, datetime] | None,
    ) -> pa.Table:
        """One binary COPY per symbol, its rows in index order; symbol and timeframe are
        constants on the client instead of text on the wire."""

        def rows(conn: Connection) -> pa.Table:
            tables: list[pa.Table] = []
            remaining = limit
            for symbol in symbols:
                if after is not None and symbol < after[0]:
                    continue
                sql = (
                    f"SELECT {_SERIES.select_list()} FROM bars WHERE symbol = %s AND timeframe = %s"
                )
                params: list[Any] = [symbol, timeframe]
                since = after[1] if after is not None and symbol == after[0] else None
                for clause, value in (
                    (" AND ts >= %s", start),
                    (" AND ts < %s", end),
                    (" AND ts > %s", since),
                ):
                    if value is not None:
                        sql += clause
                        params.append(value)
                sql += " ORDER BY ts" + (f" LIMIT {int(remaining)}" if remaining else "")
                rows = decode_rows(copy_out(conn, sql, params), _SERIES)
                tables.append(_canonical(rows, symbol, timeframe))
                if remaining is not None:
                    remaining -= rows.num_rows
                    if remaining <= 0:
                        break
            return pa.concat_tables(tables) if tables else BAR_SCHEMA.empty_table()

        return self._statement(rows)

    # -- writes ----------------------------------------------------------------------

    def write_bars(self, table: pa.Table, *, on_conflict: OnConflict = "ignore") -> WriteResult:
        check_on_conflict(on_conflict)
        table = table if table.schema.equals(BAR_SCHEMA) else normalize_bars(table)
        if table.num_rows == 0:
            return WriteResult()
        split = split_groups(table, table.num_rows)
        assert split is not None
        check_keys([g[0] for g in split], [g[1] for g in split])
        groups = prepare_groups(split)
        self._ensure_partitions("bars", batch_months(groups))

        def write(conn: Connection) -> WriteResult:
            self._lock_series(conn, "bars", [f"{g.symbol}\x1f{g.timeframe}" for g in groups])
            plan = plan_bars(groups, stored_bars(conn, groups))
            result = apply_plan(conn, plan, on_conflict)
            if result.inserted or result.replaced:
                bump_versions(conn, [(g.symbol, g.timeframe) for g in groups])
            return result

        return self._retrying(write, f"{table.num_rows:,} bars")

    def delete_bars(self, symbol: str, timeframe: str | Timeframe | None = None) -> int:
        """Delete as the base class does, bumping the versions of the series deleted in
        the same transaction."""
        symbol = normalize_symbol(symbol)
        with self.transaction():
            if timeframe is None:
                found = self.query("SELECT DISTINCT timeframe FROM bars WHERE symbol = ?", [symbol])
                timeframes = [str(tf) for tf in found.column("timeframe").to_pylist()]
            else:
                timeframes = [str(Timeframe.parse(timeframe))]
            deleted = super().delete_bars(symbol, timeframe)
            if deleted:
                with self._connection() as conn:
                    bump_versions(conn, [(symbol, tf) for tf in timeframes])
        return deleted

    def series_versions(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        if not keys:
            return {}
        symbols = [k[0] for k in keys]
        timeframes = [k[1] for k in keys]

        def read(conn: Connection) -> dict[tuple[str, str], int]:
            rows = conn.execute(
                "SELECT v.symbol, v.timeframe, v.version FROM series_versions v "
                "JOIN unnest(%s::text[], %s::text[]) AS k(symbol, timeframe) "
                "ON v.symbol = k.symbol AND v.timeframe = k.timeframe",
                [symbols, timeframes],
            ).fetchall()
            return {(s, tf): int(v) for s, tf, v in rows}

        return self._statement(read)

    def write_trades(self, table: pa.Table) -> WriteResult:
        table = table if table.schema.equals(TRADE_SCHEMA) else normalize_trades(table)
        if table.num_rows == 0:
            return WriteResult()
        table, repeats = first_trades(table)
        self._ensure_partitions("trades", months_of(ts_micros(table)))
        pairs = table.group_by(["source", "symbol"], use_threads=False).aggregate([])
        series = sorted(
            f"{s}\x1f{y}"
            for s, y in zip(
                pairs.column("source").to_pylist(), pairs.column("symbol").to_pylist(), strict=True
            )
        )

        def write(conn: Connection) -> WriteResult:
            self._lock_series(conn, "trades", series)
            inserted = insert_new_trades(conn, table)
            return WriteResult(inserted=inserted, duplicates=table.num_rows - inserted + repeats)

        return self._retrying(write, f"{table.num_rows:,} trades")

    def _retrying(self, write: Callable[[Connection], T], what: str) -> T:
        """Run ``write`` in one transaction; retry transient failures on a fresh connection."""
        current = getattr(self._local, "conn", None)
        if current is not None:  # inside the caller's transaction: it decides
            with self._errors():
                return write(current)

        def attempt() -> T:
            with self._errors(), self._checkout() as conn, conn.transaction():
                return write(conn)

        return self._with_retries(attempt, f"writing {what}", _RETRYABLE)

    def _lock_series(self, conn: Connection, table: str, keys: list[str]) -> None:
        """Serialise writers of the same series (hashed into buckets, locked in order)."""
        space = _signed(_crc(f"marketlake:{self.options.schema}.{table}"))
        buckets = sorted({_crc(key) % _LOCK_BUCKETS for key in keys})
        conn.execute(
            "SELECT pg_advisory_xact_lock(%s, b) FROM unnest(%s::int4[]) AS b", [space, buckets]
        )

    # -- partitions ------------------------------------------------------------------

    def _ensure_partitions(self, table: str, months: list[date]) -> None:
        """Create the monthly partitions a batch needs (in their own short transaction,
        unless the caller's transaction is open), one creator at a time."""
        if not self.partitioned or all((table, m) in self._partitions for m in months):
            return
        with self._lock, self._connection() as conn:
            own = getattr(self._local, "conn", None) is None
            with conn.transaction() if own else _nothing():
                conn.execute(
                    "SELECT pg_advisory_xact_lock(%s)",
                    [_signed(_crc(f"marketlake:{self.options.schema}:partitions"))],
                )
                self._partitions.update(_partitions(conn))
                missing = [m for m in months if (table, m) not in self._partitions]
                for month in missing:
                    for statement in partition_ddl(table, month):
                        conn.execute(statement)
            self._partitions.update((table, m) for m in missing)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _partitions(conn: Connection) -> set[tuple[str, date]]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent IN ('bars'::regclass, 'trades'::regclass)"
    ).fetchall()
    found = set()
    for (name,) in rows:
        match = _PARTITION_RE.match(name)
        if match:
            found.add((match.group(1), date(int(match.group(2)), int(match.group(3)), 1)))
    return found


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _canonical(rows: pa.Table, symbol: str, timeframe: str) -> pa.Table:
    """Bars of one series in :data:`BAR_SCHEMA`, the constant columns rebuilt."""
    n = rows.num_rows
    constants = {"symbol": constant_column(symbol, n), "timeframe": constant_column(timeframe, n)}
    return pa.table(
        [constants[f.name] if f.name in constants else rows.column(f.name) for f in BAR_SCHEMA],
        schema=BAR_SCHEMA,
    )


def _rows_to_arrow(description: Sequence[Any], rows: list[tuple[Any, ...]]) -> pa.Table:
    """A small result fetched row by row, typed from the column OIDs."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in description]
    arrays = []
    for column, values in zip(description, columns, strict=True):
        arrow = _OID_TYPES.get(column.type_code)
        arrays.append(
            pa.array(values, type=arrow)
            if arrow is not None or values
            else pa.array(values, pa.null())
        )
    return pa.table(arrays, names=[column.name for column in description])
