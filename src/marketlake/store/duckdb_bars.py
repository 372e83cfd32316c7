"""How the embedded store keeps bars: integer series ids instead of repeated strings.

DuckDB spends most of an insert on string columns (about 0.15 s of CPU per
million values each, whatever their compression), and the canonical bar
carries three of them (symbol, timeframe, source) that hardly ever vary.
So bars live in ``bar_data`` keyed by ``(sid, ts)``, where ``sid`` names a
(symbol, timeframe) series in ``bar_series`` and ``src`` a source in
``bar_sources``; the view ``bars`` joins them back into the canonical columns
for any SQL reader. Writes and the store's own reads go straight to
``bar_data`` and rebuild the string columns in Arrow, where a constant column
costs next to nothing.

Idempotent writes classify each (symbol, timeframe) group's rows in NumPy
(:mod:`marketlake.store.merge`): only the stored rows of the batch's series and
time range are fetched (with one statement for all the groups), and only the new
rows are inserted (with one more). A batch of very many groups is merged with one
SQL join on ``(sid, ts)`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from marketlake.schema import (
    BAR_SCHEMA,
    BAR_VALUES,
    constant_column,
    from_epoch_us,
    string_array,
)
from marketlake.store.base import OnConflict, WriteResult
from marketlake.store.duckdb_bind import bound
from marketlake.store.merge import (
    Array,
    Group,
    Repeats,
    find_repeats,
    indices,
    match_times,
    same_values,
    ts_micros,
)

VALUE_LIST = ", ".join(BAR_VALUES)
ROW_GROUP = 122_880  # DuckDB's row group size

LAYOUT_DDL = (
    """CREATE TABLE IF NOT EXISTS bar_series (
        sid INTEGER PRIMARY KEY, symbol VARCHAR NOT NULL, timeframe VARCHAR NOT NULL,
        UNIQUE (symbol, timeframe))""",
    """CREATE TABLE IF NOT EXISTS bar_sources (
        src INTEGER PRIMARY KEY, source VARCHAR NOT NULL UNIQUE)""",
    """CREATE TABLE IF NOT EXISTS bar_data (
        sid INTEGER NOT NULL, ts TIMESTAMPTZ NOT NULL,
        open DOUBLE NOT NULL, high DOUBLE NOT NULL, low DOUBLE NOT NULL,
        close DOUBLE NOT NULL, volume DOUBLE NOT NULL, trades BIGINT, vwap DOUBLE,
        src INTEGER NOT NULL)""",
)

BARS_VIEW = f"""CREATE OR REPLACE VIEW bars AS
    SELECT s.symbol, s.timeframe, d.ts, {", ".join(f"d.{c}" for c in BAR_VALUES)}, o.source
    FROM bar_data d JOIN bar_series s USING (sid) JOIN bar_sources o USING (src)"""

# Moving bars of the first layout (one wide ``bars`` table) into this one.
CONVERT_OLD_BARS = (
    "INSERT INTO bar_series SELECT row_number() OVER (ORDER BY symbol, timeframe) - 1, "
    "symbol, timeframe FROM (SELECT DISTINCT symbol, timeframe FROM bars)",
    "INSERT INTO bar_sources SELECT row_number() OVER (ORDER BY source) - 1, source "
    "FROM (SELECT DISTINCT source FROM bars)",
    f"INSERT INTO bar_data SELECT s.sid, b.ts, {', '.join(f'b.{c}' for c in BAR_VALUES)}, o.src "
    "FROM bars b JOIN bar_series s USING (symbol, timeframe) JOIN bar_sources o USING (source) "
    "ORDER BY s.sid, b.ts",
    "DROP TABLE bars",
)


class SeriesIds:
    """The integer ids of series and sources, cached; :meth:`clear` after a rollback."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self._series: dict[tuple[str, str], int] = {}
        self._sources: dict[str, int] = {}
        self._loaded = False

    def clear(self) -> None:
        self._series.clear()
        self._sources.clear()
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        for sid, symbol, timeframe in self._con.execute(
            "SELECT sid, symbol, timeframe FROM bar_series"
        ).fetchall():
            self._series[(symbol, timeframe)] = sid
        for src, source in self._con.execute("SELECT src, source FROM bar_sources").fetchall():
            self._sources[source] = src
        self._loaded = True

    def series(self, symbol: str, timeframe: str) -> int | None:
        """The id of a (symbol, timeframe) series, None when unknown."""
        self._load()
        return self._series.get((symbol, timeframe))

    def series_ids(self, keys: list[tuple[str, str]]) -> list[int]:
        """The ids of (symbol, timeframe) series, creating the unknown ones together."""
        self._load()
        new = [key for key in dict.fromkeys(keys) if key not in self._series]
        first = max(self._series.values(), default=-1) + 1
        rows = [(first + i, symbol, timeframe) for i, (symbol, timeframe) in enumerate(new)]
        for lo in range(0, len(rows), 500):  # a statement per 500 new series
            part = rows[lo : lo + 500]
            marks = ", ".join(["(?, ?, ?)"] * len(part))
            self._con.execute(
                f"INSERT INTO bar_series VALUES {marks}", [value for row in part for value in row]
            )
        self._series.update({(symbol, timeframe): sid for sid, symbol, timeframe in rows})
        return [self._series[key] for key in keys]

    def series_of(self, symbol: str) -> list[int]:
        """Every series id of a symbol, whatever its timeframe."""
        self._load()
        return [sid for (sym, _), sid in self._series.items() if sym == symbol]

    def source(self, name: str) -> int:
        """The id of a source name, created when new."""
        self._load()
        src = self._sources.get(name)
        if src is None:
            src = max(self._sources.values(), default=-1) + 1
            bound(self._con, "INSERT INTO bar_sources VALUES (?, ?)", [src, name])
            self._sources[name] = src
        return src

    def source_ids(self, column: pa.ChunkedArray) -> pa.Array:
        """A source name column as int32 ids."""
        import pyarrow.compute as pc

        first = column[0].as_py()
        if pc.all(pc.equal(column, first)).as_py():
            return pa.array(np.full(len(column), self.source(first), dtype=np.int32))
        encoded = pc.dictionary_encode(column.combine_chunks())
        ids = np.array([self.source(s) for s in encoded.dictionary.to_pylist()], dtype=np.int32)
        return pa.array(ids[encoded.indices.to_numpy()])

    def source_names(self) -> pa.Array:
        """Source names indexed by id (gaps are never produced, ids are dense)."""
        self._load()
        names = [""] * (max(self._sources.values(), default=-1) + 1)
        for name, src in self._sources.items():
            names[src] = name
        return string_array(names)


def physical(rows: pa.Table, sid: int | pa.Array, src: pa.Array) -> pa.Table:
    """Canonical bars as ``bar_data`` rows."""
    sids = sid if isinstance(sid, pa.Array) else pa.array(np.full(rows.num_rows, sid, np.int32))
    columns = {"sid": sids, "ts": rows.column("ts")}
    columns.update({name: rows.column(name) for name in BAR_VALUES})
    columns["src"] = src
    return pa.table(columns)


def canonical(rows: pa.Table, symbol: str, timeframe: str, sources: pa.Array) -> pa.Table:
    """``bar_data`` rows (ts, values, src) of one series as canonical bars."""
    import pyarrow.compute as pc

    n = rows.num_rows
    src = rows.column("src").combine_chunks()
    bounds = pc.min_max(src).as_py()
    if n and bounds["min"] == bounds["max"]:
        source = constant_column(sources[bounds["min"]].as_py(), n)
    else:
        source = pa.DictionaryArray.from_arrays(src, sources).cast(pa.string())
    arrays = [constant_column(symbol, n), constant_column(timeframe, n), rows.column("ts")]
    arrays += [rows.column(name) for name in BAR_VALUES]
    arrays.append(source)
    return pa.Table.from_arrays(arrays, schema=BAR_SCHEMA)


def row_groups(rows: pa.Table) -> pa.Table:
    """The same rows in batches of one DuckDB row group each (zero-copy slices), so that
    every DuckDB thread scans and compresses its own share of an insert."""
    if rows.num_rows <= ROW_GROUP:
        return rows
    return pa.Table.from_batches(rows.to_batches(max_chunksize=ROW_GROUP), rows.schema)


def insert_rows(con: duckdb.DuckDBPyConnection, rows: pa.Table) -> None:
    """Append physical rows to ``bar_data``."""
    rows = row_groups(rows)
    con.register("ml_rows", rows)
    try:
        columns = ", ".join(rows.column_names)
        con.execute(f"INSERT INTO bar_data ({columns}) SELECT {columns} FROM ml_rows")
    finally:
        con.unregister("ml_rows")


def _fetch(con: duckdb.DuckDBPyConnection, spans: dict[int, tuple[int, int]]) -> pa.Table:
    """Stored rows (sid, ts, values) of each series ``sid`` from its first to its last time
    (epoch microseconds, inclusive), sorted by series: one statement for all the groups of
    a write, since each statement costs about a millisecond whatever it reads. Each
    series has its own branch, so that DuckDB skips row groups by their zone maps."""
    sids = sorted(spans)
    one = f"SELECT sid, ts, {VALUE_LIST} FROM bar_data WHERE sid = ? AND ts >= ? AND ts <= ?"
    params: list[Any] = []
    for sid in sids:
        params += [sid, from_epoch_us(spans[sid][0]), from_epoch_us(spans[sid][1])]
    stored = con.execute(" UNION ALL ".join([one] * len(sids)), params).to_arrow_table()
    if len(sids) > 1 and stored.num_rows:
        sid = stored.column("sid").to_numpy()
        if not bool(np.all(sid[1:] >= sid[:-1])):
            stored = stored.take(pa.array(np.argsort(sid, kind="stable")))
    return stored


@dataclass(slots=True)
class _Group:
    """One (symbol, timeframe) group of a write: its first row of every time, sorted."""

    key: tuple[str, str]
    sid: int
    rows: pa.Table
    ts: Array
    repeats: Repeats


def merge_groups(
    con: duckdb.DuckDBPyConnection, ids: SeriesIds, groups: list[Group], on_conflict: OnConflict
) -> dict[tuple[str, str], WriteResult]:
    """Write (symbol, timeframe) groups idempotently, classifying each group's rows in
    NumPy against the stored rows of its series and time range (see the module
    docstring). Whatever the number of groups, the stored rows are fetched with one
    statement and the new rows inserted with another. Returns each group's result."""
    prepared = []
    sids = ids.series_ids([(symbol, timeframe) for symbol, timeframe, _ in groups])
    for (symbol, timeframe, rows), sid in zip(groups, sids, strict=True):
        ts = ts_micros(rows)
        repeats = find_repeats(ts, rows)
        if not repeats.identity:
            rows, ts = rows.take(pa.array(repeats.keep)), ts[repeats.keep]
        prepared.append(_Group((symbol, timeframe), sid, rows, ts, repeats))
    stored = _fetch(con, {g.sid: (int(g.ts[0]), int(g.ts[-1])) for g in prepared})
    stored_sids = stored.column("sid").to_numpy()
    inserts: list[pa.Table] = []
    replaces: list[pa.Table] = []
    results = {}
    for group in prepared:
        lo, hi = np.searchsorted(stored_sids, [group.sid, group.sid + 1]).tolist()
        new, conflict, same = _classify(group, stored.slice(lo, hi - lo))
        rows = group.rows
        if new.any():
            part = rows if new.all() else rows.take(indices(new))
            inserts.append(physical(part, group.sid, ids.source_ids(part.column("source"))))
        if on_conflict == "replace" and conflict.any():
            part = rows.take(indices(conflict))
            replaces.append(physical(part, group.sid, ids.source_ids(part.column("source"))))
        replaced = int(conflict.sum()) if on_conflict == "replace" else 0
        results[group.key] = WriteResult(
            inserted=int(new.sum()),
            duplicates=int(same.sum()) + group.repeats.duplicates,
            conflicts=int(conflict.sum()) - replaced + group.repeats.conflicts,
            replaced=replaced,
        )
    if inserts:
        insert_rows(con, pa.concat_tables(inserts))
    if replaces:
        _replace(con, pa.concat_tables(replaces))
    return results


def _classify(group: _Group, stored: pa.Table) -> tuple[Array, Array, Array]:
    """Masks over a group's rows: new, conflicting and identical to the stored bar."""
    match = match_times(group.ts, ts_micros(stored))
    same = np.zeros(len(group.ts), dtype=bool)
    if match.identity:
        same = same_values(group.rows, stored)
    elif match.found.any():
        same[match.found] = same_values(
            group.rows.take(indices(match.found)),
            stored.take(pa.array(match.stored_index[match.found])),
        )
    return ~match.found, match.found & ~same, same


def _replace(con: duckdb.DuckDBPyConnection, rows: pa.Table) -> None:
    """Overwrite stored rows with the values of physical ``rows`` (same keys)."""
    con.register("ml_rows", rows)
    try:
        sets = ", ".join(f"{c} = r.{c}" for c in (*BAR_VALUES, "src"))
        con.execute(
            f"UPDATE bar_data SET {sets} FROM ml_rows r "
            "WHERE bar_data.sid = r.sid AND bar_data.ts = r.ts"
        )
    finally:
        con.unregister("ml_rows")


def series_column(ids: SeriesIds, table: pa.Table) -> pa.Array:
    """The series id of every row of a canonical table (creating new series)."""
    import pyarrow.compute as pc

    sym = pc.dictionary_encode(table.column("symbol").combine_chunks())
    tf = pc.dictionary_encode(table.column("timeframe").combine_chunks())
    symbols, timeframes = sym.dictionary.to_pylist(), tf.dictionary.to_pylist()
    codes = sym.indices.to_numpy().astype(np.int64) * len(timeframes) + tf.indices.to_numpy()
    lookup = np.zeros(len(symbols) * len(timeframes), dtype=np.int32)
    used = np.unique(codes)
    lookup[used] = ids.series_ids(
        [
            (symbols[code // len(timeframes)], timeframes[code % len(timeframes)])
            for code in used.tolist()
        ]
    )
    return pa.array(lookup[codes])


_SAME = " AND ".join(f"i.{c} IS NOT DISTINCT FROM b.{c}" for c in BAR_VALUES)
_FIRSTS = " AND ".join(f"{c} IS NOT DISTINCT FROM first_value({c}) OVER w" for c in BAR_VALUES)


def merge_many(
    con: duckdb.DuckDBPyConnection, ids: SeriesIds, table: pa.Table, on_conflict: OnConflict
) -> WriteResult:
    """Write a batch of many series idempotently with SQL joins on (sid, ts)."""
    rows = physical(table, series_column(ids, table), ids.source_ids(table.column("source")))
    numbered = rows.append_column("ml_row", pa.array(np.arange(len(rows))))
    con.register("ml_incoming", row_groups(numbered))
    try:
        return _merge_sql(con, on_conflict)
    finally:
        con.unregister("ml_incoming")
        con.execute("DROP TABLE IF EXISTS ml_batch")
        con.execute("DROP TABLE IF EXISTS ml_match")


def _merge_sql(con: duckdb.DuckDBPyConnection, on_conflict: OnConflict) -> WriteResult:
    # The first row of every key in the batch is the candidate; later repeats count as
    # duplicates when they equal it and as conflicts when they do not.
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE ml_batch AS
        SELECT * EXCLUDE (ml_row), row_number() OVER w AS ml_k, ({_FIRSTS}) AS ml_same
        FROM ml_incoming WINDOW w AS (PARTITION BY sid, ts ORDER BY ml_row)"""
    )
    first, repeat_same, repeat_other = _counts(
        con,
        "SELECT count(*) FILTER (WHERE ml_k = 1), count(*) FILTER (WHERE ml_k > 1 AND "
        "ml_same), count(*) FILTER (WHERE ml_k > 1 AND NOT ml_same) FROM ml_batch",
    )
    con.execute("DELETE FROM ml_batch WHERE ml_k > 1")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE ml_match AS
        SELECT i.sid, i.ts, ({_SAME}) AS same FROM ml_batch i JOIN bar_data b USING (sid, ts)"""
    )
    matched, same = _counts(con, "SELECT count(*), count(*) FILTER (WHERE same) FROM ml_match")
    columns = f"sid, ts, {VALUE_LIST}, src"
    con.execute(
        f"INSERT INTO bar_data ({columns}) SELECT {columns} FROM ml_batch "
        "ANTI JOIN ml_match USING (sid, ts) ORDER BY sid, ts"
    )
    conflicts, replaced = matched - same, 0
    if on_conflict == "replace" and conflicts:
        sets = ", ".join(f"{c} = i.{c}" for c in (*BAR_VALUES, "src"))
        con.execute(
            f"""UPDATE bar_data SET {sets}
            FROM ml_batch i JOIN ml_match m USING (sid, ts)
            WHERE NOT m.same AND bar_data.sid = i.sid AND bar_data.ts = i.ts"""
        )
        replaced, conflicts = conflicts, 0
    return WriteResult(
        inserted=first - matched,
        duplicates=same + repeat_same,
        conflicts=conflicts + repeat_other,
        replaced=replaced,
    )


def _counts(con: duckdb.DuckDBPyConnection, sql: str) -> list[int]:
    row = con.execute(sql).fetchone()
    assert row is not None
    return [int(value) for value in row]
