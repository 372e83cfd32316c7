"""The embedded store and CSV import against what a user would otherwise reach for.

Measured in one run, medians of several repetitions where the operation can be
repeated on a fresh copy:

* idempotent write of a batch of 1-minute bars into a DuckDB store already
  holding 10M bars (a new symbol, and 10 series extended at once), then the same
  batch again (all duplicates); against DuckDB ``INSERT OR IGNORE`` into a table
  with a primary key, and pandas ``to_sql`` (with ``INSERT OR IGNORE``) into SQLite;
* reading one symbol's 500k bars into Arrow, against the same two;
* importing a 1M-row CSV end to end, against ``pandas.read_csv`` + ``to_sql``;
* the peak memory (RSS) of a process importing a 5M-row CSV.

``python -m bench.bench_store --quick`` (or ``python -m bench --quick``) uses a
tenth of every size.
"""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from bench.common import median_time, report
from marketlake.ingest.csv_import import import_csv
from marketlake.providers.synthetic import generate_minutes
from marketlake.store import open_store

STOCKS = ("AAPL", "MSFT", "NVDA", "AMZN", "META")
CRYPTO = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT")
START = datetime(2010, 1, 4, tzinfo=UTC)
KEY = "PRIMARY KEY (symbol, timeframe, ts)"


def minutes(symbol: str, n: int, start: datetime = START) -> pa.Table:
    """The first ``n`` synthetic 1-minute bars of ``symbol`` from ``start``."""
    days = n / 1440 + 2 if symbol.endswith("USDT") else n / 390 * 1.5 + 10
    table = generate_minutes(symbol, start, start + timedelta(days=days))
    assert table.num_rows >= n, (symbol, table.num_rows, n)
    return table.slice(0, n)


def after(table: pa.Table) -> datetime:
    last: datetime = table.column("ts")[-1].as_py()
    return last + timedelta(minutes=1)


class Setup:
    """The stores every comparison starts from, built once in a temporary directory."""

    def __init__(self, root: Path, base_rows: int, batch_rows: int) -> None:
        self.root = root
        per_symbol = base_rows // 10
        print(f"building a store of {base_rows:,} bars and batches of {batch_rows:,} …", flush=True)
        self.base = [minutes(s, per_symbol) for s in (*STOCKS, *CRYPTO)]
        self.new_symbol = minutes("ADAUSDT", batch_rows)
        self.extend = pa.concat_tables(
            [minutes(t.column("symbol")[0].as_py(), batch_rows // 10, after(t)) for t in self.base]
        )
        self.ours = root / "marketlake.duckdb"
        with open_store(f"duckdb:///{self.ours}") as store:
            for table in self.base:
                store.write_bars(table)
        self.pk = root / "pk.duckdb"
        con = duckdb.connect(str(self.pk))
        con.execute(_pk_table_sql())
        for table in self.base:
            con.register("part", table)
            con.execute("INSERT INTO bars SELECT * FROM part")
        con.close()
        self.sqlite = root / "base.sqlite"
        _sqlite_load(self.sqlite, self.base)
        os.sync()


def _pk_table_sql() -> str:
    return (
        f"CREATE TABLE bars (symbol VARCHAR, timeframe VARCHAR, ts TIMESTAMPTZ, "
        f"open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE, trades BIGINT,"
        f" vwap DOUBLE, source VARCHAR, {KEY})"
    )


def _sqlite_load(path: Path, tables: list[pa.Table]) -> None:
    con = sqlite3.connect(path)
    con.execute(
        f"CREATE TABLE IF NOT EXISTS bars (symbol TEXT, timeframe TEXT, ts TEXT, "
        f"open REAL, high REAL, low REAL, close REAL, volume REAL, trades INTEGER, "
        f"vwap REAL, source TEXT, {KEY})"
    )
    for table in tables:
        frame = _frame(table)
        _to_sql(frame, con)
    con.commit()
    con.close()


def _frame(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas()
    frame["ts"] = frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return frame


def _insert_or_ignore(table: Any, conn: Any, keys: list[str], data_iter: Any) -> int:
    """pandas ``to_sql`` method: the idempotent insert a SQLite user writes."""
    sql = (
        f"INSERT OR IGNORE INTO {table.name} ({', '.join(keys)}) "
        f"VALUES ({', '.join('?' * len(keys))})"
    )
    rows = list(data_iter)
    conn.executemany(sql, rows)
    return len(rows)


def _to_sql(frame: pd.DataFrame, con: sqlite3.Connection) -> None:
    frame.to_sql(
        "bars", con, if_exists="append", index=False, method=_insert_or_ignore, chunksize=100_000
    )


class Target:
    """A fresh copy of a prepared database, opened before the clock starts."""

    def __init__(self, source: Path, work: Path, kind: str) -> None:
        self.source, self.work, self.kind = source, work, kind
        self.handle: Any = None

    def fresh(self) -> None:
        self.close()
        shutil.copyfile(self.source, self.work)
        os.sync()
        self.open()

    def open(self) -> None:
        if self.kind == "marketlake":
            self.handle = open_store(f"duckdb:///{self.work}")
        elif self.kind == "duckdb":
            self.handle = duckdb.connect(str(self.work))
        else:
            self.handle = sqlite3.connect(self.work)

    def write(self, batch: pa.Table) -> Callable[[], None]:
        frame = _frame(batch) if self.kind == "sqlite" else None

        def run() -> None:
            if self.kind == "marketlake":
                result = self.handle.write_bars(batch)
                assert result.inserted + result.duplicates == batch.num_rows, result
            elif self.kind == "duckdb":
                self.handle.register("batch", batch)
                self.handle.execute("INSERT OR IGNORE INTO bars SELECT * FROM batch")
                self.handle.unregister("batch")
            else:  # pandas to_sql, the frame built outside the clock as a user would have it
                assert frame is not None
                _to_sql(frame, self.handle)
                self.handle.commit()

        return run

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def bench_writes(setup: Setup, batch_rows: int, repeat: int) -> None:
    targets = {
        "marketlake": Target(setup.ours, setup.root / "work.duckdb", "marketlake"),
        "DuckDB INSERT OR IGNORE": Target(setup.pk, setup.root / "work-pk.duckdb", "duckdb"),
        "pandas to_sql SQLite": Target(setup.sqlite, setup.root / "work.sqlite", "sqlite"),
    }
    holds = sum(t.num_rows for t in setup.base)
    for label, batch in (("a new symbol", setup.new_symbol), ("10 series extended", setup.extend)):
        new: dict[str, float] = {}
        again: dict[str, float] = {}
        for name, target in targets.items():
            runs = 1 if target.kind == "sqlite" else repeat
            new[name] = median_time(target.write(batch), runs, target.fresh)
            again[name] = median_time(target.write(batch), runs)  # all duplicates now
            target.close()
        ours = new.pop("marketlake")
        report(
            f"write {batch_rows:,} new 1m bars ({label}) into a store of {holds:,}",
            batch_rows,
            ours,
            new,
            "(target >= 1 M rows/s)",
        )
        ours = again.pop("marketlake")
        report(
            f"write the same {batch_rows:,} bars again (all duplicates)",
            batch_rows,
            ours,
            again,
            "(target >= 3 M rows/s)",
        )


def bench_reads(setup: Setup, read_rows: int, repeat: int) -> None:
    symbol = "BTCUSDT"
    table = next(t for t in setup.base if t.column("symbol")[0].as_py() == symbol)
    start = table.column("ts")[0].as_py()
    end = table.column("ts")[read_rows].as_py()
    store = open_store(f"duckdb:///{setup.ours}")
    got = store.read_bars(symbol, "1m", start, end).table
    assert got.num_rows == read_rows
    ours = median_time(lambda: store.read_bars(symbol, "1m", start, end), repeat)
    store.close()
    con = duckdb.connect(str(setup.pk), read_only=True)
    sql = (
        "SELECT * FROM bars WHERE symbol = ? AND timeframe = '1m' AND ts >= ? AND ts < ? "
        "ORDER BY ts"
    )
    pk = median_time(lambda: con.execute(sql, [symbol, start, end]).to_arrow_table(), repeat)
    con.close()
    lite = sqlite3.connect(setup.sqlite)
    iso = [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in (start, end)]
    sqlite_sql = sql.replace("?", ":s", 1).replace("?", ":a", 1).replace("?", ":b", 1)
    pandas = median_time(
        lambda: pd.read_sql(sqlite_sql, lite, params={"s": symbol, "a": iso[0], "b": iso[1]}),
        max(1, repeat // 3),
    )
    lite.close()
    report(
        f"read one symbol's {read_rows:,} bars into Arrow",
        read_rows,
        ours,
        {"DuckDB PK table": pk, "pandas read_sql SQLite": pandas},
        f"(target <= 60 ms for 500k; here {ours * 1000:.0f} ms)",
    )


def write_csv(path: Path, rows: int) -> None:
    table = minutes("BTCUSDT", rows)
    out = pa.table(
        {
            "Date": pc.strftime(table.column("ts"), "%Y-%m-%dT%H:%M:%SZ"),
            **{
                name.title(): table.column(name)
                for name in ("open", "high", "low", "close", "volume")
            },
        }
    )
    pacsv.write_csv(out, path, pacsv.WriteOptions(quoting_style="none"))


def bench_csv(root: Path, rows: int, repeat: int) -> None:
    path = root / "bars.csv"
    write_csv(path, rows)
    target = root / "csv.duckdb"

    def clean() -> None:
        for suffix in ("", ".wal"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)

    def ours() -> None:
        with open_store(f"duckdb:///{target}") as store:
            result = import_csv(store, path, "BTCUSDT", timeframe="1m")
        assert result.inserted == rows, result

    lite_path = root / "csv.sqlite"

    def pandas() -> None:
        lite_path.unlink(missing_ok=True)
        con = sqlite3.connect(lite_path)
        con.execute(
            f"CREATE TABLE bars (symbol TEXT, timeframe TEXT, ts TEXT, open REAL, "
            f"high REAL, low REAL, close REAL, volume REAL, trades INTEGER, vwap REAL, "
            f"source TEXT, {KEY})"
        )
        frame = pd.read_csv(path)
        frame.columns = [c.lower() for c in frame.columns]
        frame = frame.rename(columns={"date": "ts"}).assign(
            symbol="BTCUSDT", timeframe="1m", source="csv"
        )
        _to_sql(frame, con)
        con.commit()
        con.close()

    ours_s = median_time(ours, repeat, clean)
    report(
        f"import a {rows:,}-row CSV end to end",
        rows,
        ours_s,
        {"pandas read_csv+to_sql": median_time(pandas, 1)},
        "(target >= 1 M rows/s)",
    )


# The child's own high-water mark (VmHWM): getrusage's ru_maxrss survives exec, so in a
# child of this multi-GiB process it would report the parent's size, not the import's.
_CHILD = """
import re, sys, time
from pathlib import Path
from marketlake.ingest.csv_import import import_csv
from marketlake.store import open_store
with open_store(sys.argv[2]) as store:
    began = time.perf_counter()
    result = import_csv(store, sys.argv[1], "BTCUSDT", timeframe="1m")
    seconds = time.perf_counter() - began
status = Path("/proc/self/status").read_text()
print(result.inserted, seconds, re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
"""


def bench_memory(root: Path, rows: int) -> None:
    path = root / "big.csv"
    write_csv(path, rows)
    store = root / "big.duckdb"
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), f"duckdb:///{store}"],
        check=True,
        capture_output=True,
        text=True,
    )
    inserted, seconds, peak_kb = done.stdout.split()
    assert int(inserted) == rows
    size = path.stat().st_size / 2**20
    print(f"import a {rows:,}-row CSV ({size:,.0f} MiB) in a fresh process")
    print(
        f"  MarketLake peak RSS {int(peak_kb) / 1024:7.0f} MiB in {float(seconds):.1f} s "
        f"({rows / float(seconds) / 1e6:.2f} M rows/s)  (target <= 1536 MiB)"
    )
    print(
        f"  (pandas.read_csv alone would hold the whole file: about "
        f"{_pandas_bytes(path, rows) / 2**20:,.0f} MiB of frame)"
    )


def _pandas_bytes(path: Path, rows: int) -> float:
    sample = pd.read_csv(path, nrows=100_000)
    return float(sample.memory_usage(deep=True).sum()) * rows / len(sample)


def main() -> None:
    """Run every comparison and print the figures and ratios."""
    quick = "--quick" in sys.argv[1:] or os.environ.get("MARKETLAKE_BENCH_QUICK") == "1"
    scale = 10 if quick else 1
    repeat = 3
    print(f"bench_store{' (quick: a tenth of every size)' if quick else ''}", flush=True)
    with tempfile.TemporaryDirectory(prefix="marketlake-bench-") as tmp:
        root = Path(tmp)
        setup = Setup(root, 10_000_000 // scale, 1_000_000 // scale)
        bench_writes(setup, 1_000_000 // scale, repeat)
        bench_reads(setup, 500_000 // scale, 7)
        bench_csv(root, 1_000_000 // scale, repeat)
        bench_memory(root, 5_000_000 // scale)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this benchmark process peaked at {peak:,.0f} MiB)")


if __name__ == "__main__":
    main()
