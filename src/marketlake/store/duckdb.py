"""The embedded store: one DuckDB file (or memory), zero set-up.

Bars carry no primary-key index: an ART index over tens of millions of rows
makes DuckDB inserts several times slower. Idempotency instead comes from a
vectorised classification of every batch against the stored bars of the same
series and time range (see :mod:`marketlake.store.duckdb_bars`, which also
explains the integer-keyed physical layout behind the ``bars`` view). Writes
are serialised by a lock: DuckDB allows one writer per file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import duckdb
import numpy as np
import pyarrow as pa

from marketlake.errors import ConfigError, StoreError, StoreLockedError, StoreVersionError
from marketlake.schema import (
    BAR_SCHEMA,
    TRADE_SCHEMA,
    Timeframe,
    normalize_bars,
    normalize_symbol,
    normalize_trades,
)
from marketlake.store import duckdb_bars as layout
from marketlake.store.base import OnConflict, Store, WriteResult, check_keys, check_on_conflict
from marketlake.store.catalogue import SCHEMA_VERSION
from marketlake.store.duckdb_bind import bound
from marketlake.store.holder import lock_holder, path_of
from marketlake.store.merge import Group, micros_of, split_groups, ts_micros

if TYPE_CHECKING:
    from sqlalchemy import Table

# Files a store URI must not name: DuckDB would read them as an empty in-memory database.
DATA_FILE_SUFFIXES = frozenset(
    {".csv", ".tsv", ".txt", ".json", ".jsonl", ".ndjson", ".parquet", ".arrow", ".feather"}
    | {".gz", ".zst", ".xlsx", ".xls"}
)


class DuckDBStore(Store):
    """A :class:`Store` in one DuckDB database file."""

    schemes: ClassVar[tuple[str, ...]] = ("duckdb",)
    exclusive: ClassVar[bool] = True

    def __init__(self, uri: str, *, read_only: bool = False, max_fast_groups: int = 128) -> None:
        """Open (creating or upgrading) the store at ``uri``.

        ``max_fast_groups``: batches with up to this many (symbol, timeframe)
        groups are merged group by group in NumPy, larger ones with one SQL join.
        """
        super().__init__(uri)
        self.max_fast_groups = max_fast_groups
        self.path = path_of(uri)
        suffix = Path(self.path).suffix.lower()
        if suffix in DATA_FILE_SUFFIXES:
            # DuckDB would open such a file as an empty in-memory database (or write a
            # database under a data file's name): a mistake, never a store
            raise ConfigError(
                f"{self.path} is a {suffix} data file, not a DuckDB store: name a store "
                "file such as ./data/marketlake.duckdb (import CSV files with "
                "`marketlake import-csv`, Parquet lakes with `marketlake import-lake`)"
            )
        if self.path != ":memory:" and not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.Error as exc:
            holder = lock_holder(str(exc))
            if holder is not None:
                pid, command = holder
                raise StoreLockedError(
                    f"cannot open DuckDB store {self.path}: process {pid} holds it "
                    f"({command}); wait for it with --wait SECONDS, stop it, or use the "
                    "PostgreSQL store for several processes",
                    pid=pid,
                ) from None
            raise StoreError(
                f"cannot open DuckDB store {self.path}: {exc}. Another process may hold it "
                "open for writing; stop it or use the PostgreSQL store for several processes"
            ) from None
        self._con.execute("SET TimeZone = 'UTC'")
        self._lock = threading.RLock()
        self._depth = 0
        self._ids = layout.SeriesIds(self._con)
        try:
            self._migrate(read_only)
        except BaseException:
            self._con.close()
            raise

    # -- primitives -----------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            self.generation += 1
            try:
                result = bound(self._con, sql, params).fetchall()
            except duckdb.Error as exc:
                raise StoreError(f"DuckDB: {exc}") from exc
        if result and len(result) == 1 and len(result[0]) == 1 and isinstance(result[0][0], int):
            return int(result[0][0])
        return -1

    def query(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        with self._lock:
            try:
                return bound(self._con, sql, params).to_arrow_table()
            except duckdb.Error as exc:
                raise StoreError(f"DuckDB: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._con.execute("BEGIN TRANSACTION")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._con.execute("ROLLBACK")
                self._ids.clear()
                raise
            else:
                try:
                    self._con.execute("COMMIT")
                except duckdb.Error as exc:
                    self._ids.clear()
                    raise StoreError(f"DuckDB: commit failed: {exc}") from exc
            finally:
                self._depth = 0

    def schema_version(self) -> int:
        with self._lock:
            row = self._con.execute(
                "SELECT value FROM marketlake_meta WHERE key = 'schema_version'"
            ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._heartbeat.stop()
        with self._lock:
            self._con.close()

    # -- schema ---------------------------------------------------------------------

    def _migrate(self, read_only: bool) -> None:
        with self._lock:
            if not read_only:
                self._con.execute(
                    "CREATE TABLE IF NOT EXISTS marketlake_meta "
                    "(key VARCHAR PRIMARY KEY, value VARCHAR)"
                )
            version = self.schema_version()
            if version > SCHEMA_VERSION:
                raise StoreVersionError(
                    f"store {self.path} has schema version {version}, newer than this "
                    f"MarketLake's {SCHEMA_VERSION}; upgrade MarketLake to open it"
                )
            if read_only or (version == SCHEMA_VERSION and not self._has_old_bars_table()):
                return
            with self.transaction():
                self._create_tables()
                bound(
                    self._con,
                    "INSERT OR REPLACE INTO marketlake_meta VALUES ('schema_version', ?)",
                    [str(SCHEMA_VERSION)],
                )

    def _has_old_bars_table(self) -> bool:
        row = self._con.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_name = 'bars' AND table_type = 'BASE TABLE'"
        ).fetchone()
        return bool(row and row[0])

    def _create_tables(self) -> None:
        # SQLAlchemy (a quarter of a second to import) only to create or upgrade a store
        from sqlalchemy.dialects import postgresql
        from sqlalchemy.schema import CreateTable

        from marketlake.store.tables import metadata

        for statement in layout.LAYOUT_DDL:
            self._con.execute(statement)
        if self._has_old_bars_table():
            for statement in layout.CONVERT_OLD_BARS:
                self._con.execute(statement)
        self._con.execute(layout.BARS_VIEW)
        for table in metadata.sorted_tables:
            if table.name == "bars":  # the view above, over the integer-keyed layout
                continue
            create = CreateTable(table, if_not_exists=True)
            ddl = create.compile(dialect=postgresql.dialect())  # type: ignore[no-untyped-call]
            self._con.execute(str(ddl))
            self._add_missing_columns(table)

    def _add_missing_columns(self, table: Table) -> None:
        from sqlalchemy.dialects import postgresql

        name = table.name
        have = {row[0] for row in self._con.execute(f"DESCRIBE {name}").fetchall()}
        for column in table.columns:
            if column.name not in have:
                sql_type = column.type.compile(dialect=postgresql.dialect())  # type: ignore[no-untyped-call]
                self._con.execute(f'ALTER TABLE {name} ADD COLUMN "{column.name}" {sql_type}')

    # -- bars -------------------------------------------------------------------------

    def write_bars(self, table: pa.Table, *, on_conflict: OnConflict = "ignore") -> WriteResult:
        import pyarrow.compute as pc

        check_on_conflict(on_conflict)
        table = table if table.schema.equals(BAR_SCHEMA) else normalize_bars(table)
        if table.num_rows == 0:
            return WriteResult()
        groups = split_groups(table, self.max_fast_groups)
        if groups is not None:
            return sum(self._merge(groups, on_conflict).values(), WriteResult())
        check_keys(
            pc.unique(table.column("symbol")).to_pylist(),
            pc.unique(table.column("timeframe")).to_pylist(),
        )
        with self.transaction(), self._writing():
            return layout.merge_many(self._con, self._ids, table, on_conflict)

    def _write_series(
        self, groups: list[Group], on_conflict: OnConflict
    ) -> dict[tuple[str, str], WriteResult]:
        """``max_fast_groups`` series at a time, each chunk classified in one pass."""
        results: dict[tuple[str, str], WriteResult] = {}
        step = max(1, self.max_fast_groups)
        for lo in range(0, len(groups), step):
            results |= self._merge(groups[lo : lo + step], on_conflict)
        return results

    def _merge(
        self, groups: list[Group], on_conflict: OnConflict
    ) -> dict[tuple[str, str], WriteResult]:
        check_keys([g[0] for g in groups], [g[1] for g in groups])
        with self.transaction(), self._writing():
            return layout.merge_groups(self._con, self._ids, groups, on_conflict)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Count a write (for caches) and report DuckDB's errors as store errors."""
        self.generation += 1
        try:
            yield
        except duckdb.Error as exc:
            raise StoreError(f"DuckDB: writing bars failed: {exc}") from exc

    def _select_bars(
        self,
        symbols: list[str],
        timeframe: str,
        start: datetime | None,
        end: datetime | None,
        limit: int | None,
        after: tuple[str, datetime] | None,
    ) -> pa.Table:
        """Series by series straight from ``bar_data``, in symbol order."""
        tables: list[pa.Table] = []
        remaining = limit
        with self._lock:
            sources = self._ids.source_names()
            for symbol in symbols:
                if after is not None and symbol < after[0]:
                    continue
                sid = self._ids.series(symbol, timeframe)
                if sid is None:
                    continue
                since = after[1] if after is not None and symbol == after[0] else None
                rows = self._series_rows(sid, start, end, since, remaining)
                tables.append(layout.canonical(rows, symbol, timeframe, sources))
                if remaining is not None:
                    remaining -= rows.num_rows
                    if remaining <= 0:
                        break
        if len(tables) == 1:  # concat_tables of one table would load pandas (~0.3 s)
            return tables[0]
        return pa.concat_tables(tables) if tables else BAR_SCHEMA.empty_table()

    def _series_rows(
        self,
        sid: int,
        start: datetime | None,
        end: datetime | None,
        after: datetime | None,
        limit: int | None,
    ) -> pa.Table:
        """The rows of one series, in time order, read through a relation: DuckDB fills
        its Arrow result straight from the scan, in parallel, where ``execute`` would
        materialise the result first and convert it afterwards (a quarter slower for 500k
        bars). A relation with parameters is run eagerly and slowly, so the values are
        written as literals: the integer id and times formatted from aware datetimes."""
        sql = f"SELECT ts, {layout.VALUE_LIST}, src FROM bar_data WHERE sid = {int(sid)}"
        for op, value in ((">=", start), ("<", end), (">", after)):
            if value is not None:
                sql += f" AND ts {op} {timestamptz(value)}"
        if limit is not None:
            sql += f" ORDER BY ts LIMIT {int(limit)}"
        rows = self._con.sql(sql).to_arrow_table(layout.ROW_GROUP)  # a batch per row group
        if limit is None and not _increasing(rows.column("ts")):
            rows = rows.take(pa.array(np.argsort(ts_micros(rows), kind="stable")))
        return rows

    def delete_bars(self, symbol: str, timeframe: str | Timeframe | None = None) -> int:
        symbol = normalize_symbol(symbol)
        with self.transaction():
            if timeframe is None:
                sids = self._ids.series_of(symbol)
            else:
                sid = self._ids.series(symbol, str(Timeframe.parse(timeframe)))
                sids = [] if sid is None else [sid]
            if not sids:
                return 0
            return self.execute(
                f"DELETE FROM bar_data WHERE sid IN ({', '.join('?' * len(sids))})", sids
            )

    def bar_summary(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.query(
            "SELECT s.symbol, s.timeframe, d.bars, d.first, d.last FROM (SELECT sid, "
            "count(*) AS bars, min(ts) AS first, max(ts) AS last FROM bar_data GROUP BY sid) d "
            "JOIN bar_series s USING (sid) ORDER BY s.symbol, s.timeframe"
        ).to_pylist()
        return rows

    # -- trades -----------------------------------------------------------------------

    def write_trades(self, table: pa.Table) -> WriteResult:
        table = table if table.schema.equals(TRADE_SCHEMA) else normalize_trades(table)
        if table.num_rows == 0:
            return WriteResult()
        with self.transaction():
            self.generation += 1
            con = self._con
            con.register("ml_trades", table)
            try:
                con.execute(
                    "CREATE OR REPLACE TEMP TABLE ml_tbatch AS SELECT * FROM ml_trades "
                    "QUALIFY row_number() OVER (PARTITION BY source, symbol, trade_id) = 1"
                )
                n_batch, existing = layout._counts(
                    con,
                    "SELECT count(*), count(*) FILTER (WHERE t.trade_id IS NOT NULL) "
                    "FROM ml_tbatch i LEFT JOIN trades t USING (source, symbol, trade_id)",
                )
                con.execute(
                    "INSERT INTO trades SELECT i.* FROM ml_tbatch i ANTI JOIN trades t "
                    "USING (source, symbol, trade_id)"
                )
            finally:
                con.unregister("ml_trades")
                con.execute("DROP TABLE IF EXISTS ml_tbatch")
        return WriteResult(
            inserted=n_batch - existing, duplicates=table.num_rows - n_batch + existing
        )


def _increasing(column: pa.ChunkedArray) -> bool:
    """Whether a time column strictly increases, read in place chunk by chunk."""
    previous: int | None = None
    for chunk in column.chunks:
        if not len(chunk):
            continue
        ts = micros_of(chunk)
        if previous is not None and ts[0] <= previous:
            return False
        if not bool(np.all(ts[1:] > ts[:-1])):
            return False
        previous = int(ts[-1])
    return True


def timestamptz(value: datetime) -> str:
    """An aware datetime as a DuckDB TIMESTAMPTZ literal, exact to the microsecond."""
    if value.tzinfo is None:
        raise ValueError(f"{value!r} has no timezone")
    return f"TIMESTAMPTZ '{value.astimezone(UTC).isoformat()}'"
