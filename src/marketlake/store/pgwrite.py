"""The PostgreSQL store's data path: binary COPY in and out, and write classification.

A batch of bars is split into (symbol, timeframe) groups; inside each group
:mod:`marketlake.store.merge` (shared with the embedded store) finds repeats
and matches the incoming times against the stored ones in NumPy. The stored
rows of *all* groups come back with one binary ``COPY ... TO STDOUT``, tagged
with their group number instead of their symbol text, and the new rows of all
groups go out with one binary ``COPY ... FROM STDIN``.
"""

from __future__ import annotations

import itertools
import select
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import pq

from marketlake.schema import BAR_SCHEMA, BAR_VALUES, from_epoch_us
from marketlake.store.base import OnConflict, WriteResult
from marketlake.store.merge import find_repeats, indices, match_times, same_values, ts_micros
from marketlake.store.pgcopy import CopyData, FastSelect, decode_rows, encode_rows
from marketlake.store.pgschema import months_of

Connection = psycopg.Connection[Any]
STORED = FastSelect(
    pa.schema(
        [
            pa.field("code", pa.int64(), nullable=False),
            *[BAR_SCHEMA.field(n) for n in ("ts", *BAR_VALUES)],
        ]
    )
)


# -- COPY --------------------------------------------------------------------------------


def copy_out(conn: Connection, select_sql: str, params: Sequence[Any]) -> CopyData:
    """The binary COPY stream of ``select_sql`` (parameters bound on the client).

    psycopg's ``Copy.read`` runs a generator per row and keeps every row's
    libpq buffer alive; this loop appends each message to one bytearray (its
    buffer is freed at once) and waits on the socket, without the GIL, only
    when libpq has nothing buffered. That makes large reads several times faster.
    """
    statement = psycopg.ClientCursor(conn).mogrify(select_sql, list(params))
    pgconn = conn.pgconn
    data = CopyData()
    with conn.lock:
        pgconn.send_query(f"COPY ({statement}) TO STDOUT (FORMAT binary)".encode())
        while pgconn.flush():
            _wait(pgconn, write=True)
        result = _next_result(pgconn)
        if result is None or result.status != pq.ExecStatus.COPY_OUT:
            _drain(pgconn)
            raise _result_error(result, conn)
        buffer, get, append = data.buffer, pgconn.get_copy_data, data.lengths.append
        while True:
            size, message = get(1)
            if size > 0:
                buffer += message
                append(size)
            elif size == 0:
                _wait(pgconn)
                pgconn.consume_input()
            else:
                break
        final = _next_result(pgconn)
        _drain(pgconn)
        if size == -2 or final is None or final.status != pq.ExecStatus.COMMAND_OK:
            raise _result_error(final, conn)
    return data


def _wait(pgconn: Any, write: bool = False) -> None:
    """Block (releasing the GIL) until the connection's socket is ready."""
    fd = pgconn.socket
    select.select([] if write else [fd], [fd] if write else [], [])


def _next_result(pgconn: Any) -> Any:
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            return pgconn.get_result()
        _wait(pgconn)


def _drain(pgconn: Any) -> None:
    while pgconn.get_result() is not None:
        pass


def _result_error(result: Any, conn: Connection) -> psycopg.Error:
    if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
        return psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
    message = conn.pgconn.error_message.decode(errors="replace").strip() or "COPY failed"
    return psycopg.OperationalError(message)


def copy_in(conn: Connection, table: str, rows: pa.Table) -> None:
    """Send ``rows`` into ``table`` (columns by name) with one binary COPY."""
    columns = ", ".join(rows.column_names)
    with (
        conn.cursor() as cursor,
        cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT binary)") as copy,
    ):
        for piece in encode_rows(rows):
            copy.write(piece)


def replace_bars(conn: Connection, changed: pa.Table) -> None:
    """Overwrite the stored bars with the keys of ``changed`` by its values."""
    conn.execute("DROP TABLE IF EXISTS ml_bars_replace")
    conn.execute("CREATE TEMP TABLE ml_bars_replace (LIKE bars) ON COMMIT DROP")
    copy_in(conn, "ml_bars_replace", changed)
    sets = ", ".join(f"{c} = r.{c}" for c in (*BAR_VALUES, "source"))
    conn.execute(
        f"UPDATE bars b SET {sets} FROM ml_bars_replace r WHERE b.symbol = r.symbol "
        "AND b.timeframe = r.timeframe AND b.ts = r.ts"
    )
    conn.execute("DROP TABLE ml_bars_replace")


# -- bars --------------------------------------------------------------------------------


@dataclass(slots=True)
class Group:
    """One (symbol, timeframe) group of a batch: first rows of each time, in time order."""

    symbol: str
    timeframe: str
    rows: pa.Table
    ts: np.ndarray[Any, Any]
    repeats_same: int
    repeats_conflicting: int

    @property
    def span(self) -> tuple[str, str, datetime, datetime]:
        return (
            self.symbol,
            self.timeframe,
            from_epoch_us(int(self.ts[0])),
            from_epoch_us(int(self.ts[-1])),
        )


def prepare_groups(groups: Sequence[tuple[str, str, pa.Table]]) -> list[Group]:
    """Drop in-batch repeats (the first row of a time wins) and sort each group by time."""
    prepared = []
    for symbol, timeframe, rows in groups:
        ts = ts_micros(rows)
        repeats = find_repeats(ts, rows)
        if not repeats.identity:
            rows, ts = rows.take(pa.array(repeats.keep)), ts[repeats.keep]
        prepared.append(Group(symbol, timeframe, rows, ts, repeats.duplicates, repeats.conflicts))
    return prepared


def batch_months(groups: Sequence[Group]) -> list[Any]:
    """The UTC months a batch touches (for partition creation)."""
    return months_of(np.concatenate([g.ts for g in groups]))


def stored_bars(conn: Connection, groups: Sequence[Group]) -> list[pa.Table]:
    """The stored keys and values inside each group's time range, one table per group."""
    values = ", ".join(["(%s::int8, %s, %s, %s::timestamptz, %s::timestamptz)"] * len(groups))
    params: list[Any] = [v for i, g in enumerate(groups) for v in (i, *g.span)]
    lo = min(g.span[2] for g in groups)
    hi = max(g.span[3] for g in groups)
    spec = FastSelect(STORED.schema, (("code", "k_code"),))
    sql = (
        f"SELECT {spec.select_list()} FROM bars JOIN (VALUES {values}) "
        "AS k(k_code, k_symbol, k_timeframe, k_lo, k_hi) ON symbol = k_symbol "
        "AND timeframe = k_timeframe AND ts BETWEEN k_lo AND k_hi "
        "WHERE ts >= %s AND ts <= %s AND symbol = ANY(%s) AND timeframe = ANY(%s)"
    )
    params += [lo, hi, sorted({g.symbol for g in groups}), sorted({g.timeframe for g in groups})]
    stored = decode_rows(copy_out(conn, sql, params), spec)
    codes = stored.column("code").to_numpy()
    if codes.size < 2 or bool(np.all(codes[1:] >= codes[:-1])):
        bounds = np.searchsorted(codes, np.arange(len(groups) + 1))
        return [stored.slice(lo, hi - lo) for lo, hi in itertools.pairwise(bounds.tolist())]
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(groups) + 1))
    return [stored.take(pa.array(order[lo:hi])) for lo, hi in itertools.pairwise(bounds.tolist())]


@dataclass(slots=True)
class Plan:
    """What a batch does: rows to insert, rows to overwrite, and the counts."""

    new: list[pa.Table]
    changed: list[pa.Table]
    result: WriteResult


def plan_bars(groups: Sequence[Group], stored: Sequence[pa.Table]) -> Plan:
    """Classify every group's rows as new, duplicate or conflicting."""
    plan = Plan([], [], WriteResult())
    for group, old in zip(groups, stored, strict=True):
        match = match_times(group.ts, ts_micros(old))
        same = np.zeros(len(group.ts), dtype=bool)
        if match.identity:
            same = same_values(group.rows, old)
        elif match.found.any():
            same[match.found] = same_values(
                group.rows.take(indices(match.found)),
                old.take(pa.array(match.stored_index[match.found])),
            )
        new = ~match.found
        conflict = match.found & ~same
        if new.any():
            plan.new.append(group.rows if new.all() else group.rows.take(indices(new)))
        if conflict.any():
            plan.changed.append(group.rows.take(indices(conflict)))
        plan.result += WriteResult(
            inserted=int(new.sum()),
            duplicates=int(same.sum()) + group.repeats_same,
            conflicts=int(conflict.sum()) + group.repeats_conflicting,
        )
    return plan


def apply_plan(conn: Connection, plan: Plan, on_conflict: OnConflict) -> WriteResult:
    """Insert the new rows (one COPY) and, with ``replace``, overwrite the changed ones."""
    if plan.new:
        copy_in(conn, "bars", pa.concat_tables(plan.new))
    if on_conflict != "replace" or not plan.changed:
        return plan.result
    changed = pa.concat_tables(plan.changed)
    replace_bars(conn, changed)
    r = plan.result
    return WriteResult(r.inserted, r.duplicates, r.conflicts - changed.num_rows, changed.num_rows)


def bump_versions(conn: Connection, keys: Sequence[tuple[str, str]]) -> None:
    """Add one to the version of each (symbol, timeframe) series, in the caller's
    transaction (readers see the new version when the bars are committed)."""
    unique = sorted(set(keys))
    conn.execute(
        "INSERT INTO series_versions (symbol, timeframe, version) "
        "SELECT symbol, timeframe, 1 FROM unnest(%s::text[], %s::text[]) AS k(symbol, timeframe) "
        "ON CONFLICT (symbol, timeframe) DO UPDATE SET version = series_versions.version + 1",
        [[k[0] for k in unique], [k[1] for k in unique]],
    )


# -- trades ------------------------------------------------------------------------------


def first_trades(table: pa.Table) -> tuple[pa.Table, int]:
    """Keep the first trade of every (source, symbol, trade_id); count the repeats."""
    keys = table.select(["source", "symbol", "trade_id"]).append_column(
        "_row", pa.array(np.arange(table.num_rows))
    )
    first = keys.group_by(["source", "symbol", "trade_id"], use_threads=False).aggregate(
        [("_row", "min")]
    )
    if first.num_rows == table.num_rows:
        return table, 0
    keep = np.sort(first.column("_row_min").to_numpy())
    return table.take(pa.array(keep)), table.num_rows - len(keep)


def insert_new_trades(conn: Connection, table: pa.Table) -> int:
    """Insert the trades whose key is not stored yet; return how many were inserted."""
    conn.execute("DROP TABLE IF EXISTS ml_trades_in")
    conn.execute("CREATE TEMP TABLE ml_trades_in (LIKE trades) ON COMMIT DROP")
    copy_in(conn, "ml_trades_in", table)
    conn.execute("ANALYZE ml_trades_in")
    inserted = conn.execute(
        "INSERT INTO trades SELECT i.* FROM ml_trades_in i WHERE NOT EXISTS ("
        "SELECT 1 FROM trades t WHERE t.source = i.source AND t.symbol = i.symbol "
        "AND t.trade_id = i.trade_id)"
    ).rowcount
    conn.execute("DROP TABLE ml_trades_in")
    return inserted
