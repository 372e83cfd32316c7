"""PostgreSQL store versus what a user would otherwise write, measured in the same run.

Writes 1M 1-minute bars (2 symbols, 500k each) idempotently, writes them again
(all duplicates), and reads one symbol's 500k bars into Arrow. The alternatives
write into a plain table with a primary key on (symbol, timeframe, ts):

- a bare psycopg ``COPY`` (``write_row`` of ready-made tuples, no conflict handling),
- ``COPY`` into a staging table then ``INSERT ... ON CONFLICT DO NOTHING``,
- SQLAlchemy Core ``executemany`` with ``ON CONFLICT DO NOTHING``,
- ``pandas.DataFrame.to_sql(method="multi")``, and ``pandas.read_sql`` for reads.

The two slowest alternatives run on a sample (rows/s is what is compared).
Figures are medians of ``BENCH_REPEAT`` runs (default 3). Settings:
``BENCH_PG_ROWS`` (default 1,000,000), ``MARKETLAKE_BENCH_POSTGRES`` (server URI).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bench.common import median_time

SERVER = os.environ.get("MARKETLAKE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
ROWS = int(os.environ.get("BENCH_PG_ROWS", "1000000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
EXECUTEMANY_SAMPLE = 50_000
TO_SQL_SAMPLE = 10_000
ALT_TABLE = """CREATE TABLE IF NOT EXISTS alt_bars (
    symbol text NOT NULL, timeframe text NOT NULL, ts timestamptz NOT NULL,
    open float8 NOT NULL, high float8 NOT NULL, low float8 NOT NULL, close float8 NOT NULL,
    volume float8 NOT NULL, trades int8, vwap float8, source text NOT NULL,
    PRIMARY KEY (symbol, timeframe, ts))"""


def _bars(rows: int) -> pa.Table:
    from marketlake.providers.synthetic import generate_bars

    half = rows // 2
    days = half // 1440 + 1
    end = datetime(2023, 1, 1, tzinfo=UTC).timestamp() + days * 86400
    table = generate_bars(
        ["BTCUSDT", "ETHUSDT"],
        "1m",
        datetime(2023, 1, 1, tzinfo=UTC),
        datetime.fromtimestamp(end, tz=UTC),
    )
    per = [
        table.filter(pc.equal(table["symbol"], s)).slice(0, half) for s in ("BTCUSDT", "ETHUSDT")
    ]
    return pa.concat_tables(per)


def _tuples(table: pa.Table) -> list[tuple[Any, ...]]:
    columns = [table.column(n).to_pylist() for n in table.column_names]
    return list(zip(*columns, strict=True))


class Bench:
    """One schema with the MarketLake store and a plain table for the alternatives."""

    def __init__(self, server: str) -> None:
        import psycopg

        from marketlake.store import open_store
        from marketlake.store.pgmigrate import migrate

        self.schema = f"ml_bench_{os.getpid()}"
        self.uri = f"{server}?schema={self.schema}"
        self.admin = psycopg.connect(server, autocommit=True)
        migrate(self.uri, timescale="off")
        self.store = open_store(self.uri)
        self.conn = psycopg.connect(server, options=f"-c search_path={self.schema}")
        self.conn.execute(ALT_TABLE)
        self.conn.commit()

    def empty(self, table: str) -> None:
        self.conn.execute(f"TRUNCATE {table}")
        self.conn.commit()

    def close(self) -> None:
        self.store.close()
        self.conn.close()
        self.admin.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        self.admin.close()

    # -- alternatives ------------------------------------------------------------------

    def bare_copy(self, rows: list[tuple[Any, ...]]) -> None:
        with self.conn.cursor() as cursor, cursor.copy("COPY alt_bars FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        self.conn.commit()

    def staging_copy(self, table: pa.Table) -> None:
        from marketlake.store.pgwrite import copy_in

        self.conn.execute("CREATE TEMP TABLE staging (LIKE alt_bars) ON COMMIT DROP")
        copy_in(self.conn, "staging", table)
        self.conn.execute("INSERT INTO alt_bars SELECT * FROM staging ON CONFLICT DO NOTHING")
        self.conn.commit()

    def executemany(self, rows: list[dict[str, Any]]) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.dialects.postgresql import insert

        from marketlake.store.tables import metadata

        engine = create_engine(
            SERVER.replace("postgresql://", "postgresql+psycopg://", 1),
            connect_args={"options": f"-c search_path={self.schema}"},
        )
        table = metadata.tables["bars"].to_metadata(_alt_metadata(), name="alt_bars")
        with engine.begin() as conn:
            conn.execute(insert(table).on_conflict_do_nothing(), rows)
        engine.dispose()

    def to_sql(self, frame: Any) -> None:
        from sqlalchemy import create_engine

        engine = create_engine(
            SERVER.replace("postgresql://", "postgresql+psycopg://", 1),
            connect_args={"options": f"-c search_path={self.schema}"},
        )
        frame.to_sql(
            "alt_bars", engine, if_exists="append", index=False, method="multi", chunksize=1000
        )
        engine.dispose()

    def read_sql(self) -> Any:
        import pandas as pd
        from sqlalchemy import create_engine

        engine = create_engine(
            SERVER.replace("postgresql://", "postgresql+psycopg://", 1),
            connect_args={"options": f"-c search_path={self.schema}"},
        )
        frame = pd.read_sql(
            "SELECT * FROM bars WHERE symbol = 'BTCUSDT' AND timeframe = '1m' ORDER BY ts", engine
        )
        engine.dispose()
        return frame


def _alt_metadata() -> Any:
    from sqlalchemy import MetaData

    return MetaData()


def _rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("inf")


def _line(label: str, ours: float | None, other: str, theirs: float) -> str:
    left = f"{ours:>12,.0f}" if ours is not None else " " * 12
    ratio = f"{ours / theirs:6.1f}x" if ours is not None else ""
    return f"{label:<34}{left}  {other:<46}{theirs:>12,.0f}  {ratio}"


def measure(bench: Bench, bars: pa.Table) -> list[str]:
    """Run every measurement; return the printed lines."""
    n = bars.num_rows
    store = bench.store
    write = median_time(lambda: store.write_bars(bars), REPEAT, lambda: bench.empty("bars"))
    rewrite = median_time(lambda: store.write_bars(bars), REPEAT)
    half = store.count_bars("BTCUSDT", "1m")
    read = median_time(lambda: store.read_bars("BTCUSDT", "1m"), REPEAT)
    tuples = _tuples(bars)
    bare = median_time(lambda: bench.bare_copy(tuples), REPEAT, lambda: bench.empty("alt_bars"))
    staging = median_time(lambda: bench.staging_copy(bars), REPEAT, lambda: bench.empty("alt_bars"))
    staging_again = median_time(lambda: bench.staging_copy(bars), REPEAT)
    sample = bars.slice(0, EXECUTEMANY_SAMPLE).to_pylist()
    many = median_time(lambda: bench.executemany(sample), 1, lambda: bench.empty("alt_bars"))
    many_again = median_time(lambda: bench.executemany(sample), 1)
    frame = bars.slice(0, TO_SQL_SAMPLE).to_pandas()
    to_sql = median_time(lambda: bench.to_sql(frame), 1, lambda: bench.empty("alt_bars"))
    read_sql = median_time(bench.read_sql, REPEAT)
    ours_write, ours_rewrite, ours_read = _rate(n, write), _rate(n, rewrite), _rate(half, read)
    return [
        f"PostgreSQL: {n:,} 1-minute bars, 2 symbols; rows/s, medians of {REPEAT} runs",
        f"{'':<34}{'MarketLake':>12}  {'alternative':<46}{'rows/s':>12}  ratio",
        _line(
            "idempotent write (new rows)",
            ours_write,
            "bare psycopg COPY, no conflict handling",
            _rate(n, bare),
        ),
        _line("", ours_write, "COPY to staging + INSERT ON CONFLICT", _rate(n, staging)),
        _line(
            "",
            ours_write,
            f"SQLAlchemy executemany ON CONFLICT ({len(sample):,})",
            _rate(len(sample), many),
        ),
        _line(
            "",
            ours_write,
            f'pandas to_sql(method="multi") ({TO_SQL_SAMPLE:,})',
            _rate(TO_SQL_SAMPLE, to_sql),
        ),
        _line(
            "re-write (all duplicates)",
            ours_rewrite,
            "COPY to staging + INSERT ON CONFLICT",
            _rate(n, staging_again),
        ),
        _line(
            "",
            ours_rewrite,
            f"SQLAlchemy executemany ON CONFLICT ({len(sample):,})",
            _rate(len(sample), many_again),
        ),
        _line(
            f"read {half:,} bars into Arrow", ours_read, "pandas.read_sql", _rate(half, read_sql)
        ),
    ]


def main() -> None:
    """Print MarketLake's PostgreSQL figures next to the alternatives'."""
    import psycopg

    try:
        psycopg.connect(SERVER, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        print(f"skipped: PostgreSQL at {SERVER} not reachable ({' '.join(str(exc).split())})")
        return
    bars = _bars(ROWS)
    bench = Bench(SERVER)
    try:
        for line in measure(bench, bars):
            print(line, flush=True)
    finally:
        bench.close()


if __name__ == "__main__":
    main()
