"""The Parquet lake: stored bars and trades as hive-partitioned Parquet files.

Layout under the lake directory (readable by DuckDB, Polars, Spark or pyarrow
without MarketLake)::

    bars/timeframe=1m/symbol=AAPL/year=2024/part-<export id>.parquet
    trades/symbol=BTCUSDT/year=2024/part-<export id>.parquet
    instruments.parquet

Partition values are percent-encoded the way Spark and Arrow do (``^GSPC``
becomes ``symbol=%5EGSPC``) and are not repeated inside the files. Files are
zstd-compressed, ``ts`` is ``timestamp[us, UTC]``, and every export writes one
file per partition and commits them together (hidden names, renames, then a
manifest under ``_exports/``, see :class:`_Commit`), so a reader never sees half
a file nor half an export. :func:`compact_lake` merges the files of a partition into one
(newest export wins on a repeated key), so many small appends do not slow
reads down. For example, with DuckDB::

    SELECT * FROM read_parquet('lake/bars/**/*.parquet', hive_partitioning = true)
    WHERE symbol = 'AAPL' AND timeframe = '1m'
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from marketlake.errors import InputError
from marketlake.schema import BAR_SCHEMA, TRADE_SCHEMA, Instrument, Timeframe, utcnow
from marketlake.store.base import Store, WriteResult

BAR_PARTITIONS = pa.schema(
    [("timeframe", pa.string()), ("symbol", pa.string()), ("year", pa.int32())]
)
TRADE_PARTITIONS = pa.schema([("symbol", pa.string()), ("year", pa.int32())])
BAR_FILE_SCHEMA = pa.schema([f for f in BAR_SCHEMA if f.name not in ("symbol", "timeframe")])
INSTRUMENTS_FILE = "instruments.parquet"
WRITE_BATCH_ROWS = 500_000


@dataclass(slots=True)
class LakeSummary:
    """What an export, import or compaction did."""

    files: int = 0
    partitions: int = 0
    bars: int = 0
    trades: int = 0
    instruments: int = 0
    removed_files: int = 0
    duplicates_dropped: int = 0
    written: WriteResult = field(default_factory=WriteResult)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "partitions": self.partitions,
            "bars": self.bars,
            "trades": self.trades,
            "instruments": self.instruments,
            "removed_files": self.removed_files,
            "duplicates_dropped": self.duplicates_dropped,
            **self.written.as_dict(),
        }


def _segment(name: str, value: object) -> str:
    return f"{name}={quote(str(value), safe='')}"


def _new_export_id() -> str:
    return f"{utcnow():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"


class _PartitionFile:
    """One Parquet file being written under a hidden name (``.part-….parquet.tmp``, which
    readers skip); :meth:`publish` renames it into place."""

    def __init__(self, directory: Path, schema: pa.Schema, export_id: str, number: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.final = directory / f"part-{export_id}-{number:05d}.parquet"
        self.temporary = directory / f".{self.final.name}.tmp"
        self.writer = pq.ParquetWriter(self.temporary, schema, compression="zstd")
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table, row_group_size=WRITE_BATCH_ROWS)
        self.rows += table.num_rows

    def close(self) -> None:
        self.writer.close()

    def publish(self) -> None:
        os.replace(self.temporary, self.final)


class _Commit:
    """The files of one export or compaction, published together.

    Every file is written under its hidden name first; :meth:`commit` renames them all
    into place, then writes the manifest ``_exports/<id>.json`` listing them, last. A
    part file no manifest lists belongs to an export that did not finish: MarketLake's
    readers skip it and the next export or compaction deletes it (see :func:`clean_lake`).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.id = _new_export_id()
        self.files: list[_PartitionFile] = []

    def open(self, directory: Path, schema: pa.Schema) -> _PartitionFile:
        file = _PartitionFile(directory, schema, self.id, len(self.files))
        self.files.append(file)
        return file

    def write(self, directory: Path, table: pa.Table) -> None:
        file = self.open(directory, table.schema)
        file.write(table)
        file.close()

    def commit(self) -> None:
        for file in self.files:
            file.publish()
        names = [file.final.relative_to(self.root).as_posix() for file in self.files]
        _write_manifest(self.root, self.id, names)


MANIFESTS = "_exports"


def _write_manifest(root: Path, name: str, files: list[str]) -> None:
    folder = root / MANIFESTS
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}.json.tmp"
    temporary.write_text(json.dumps({"files": files}))
    os.replace(temporary, folder / f"{name}.json")


def _part_files(root: Path) -> list[Path]:
    return sorted(
        [
            *(root / "bars").glob("*/*/*/part-*.parquet"),
            *(root / "trades").glob("*/*/part-*.parquet"),
        ]
    )


def committed_files(root: Path) -> set[Path]:
    """The part files of finished exports: those a manifest lists (every part file of a
    lake written before manifests existed)."""
    folder = root / MANIFESTS
    if not folder.is_dir():
        return set(_part_files(root))
    found: set[Path] = set()
    for manifest in folder.glob("*.json"):
        found.update(root / name for name in json.loads(manifest.read_text())["files"])
    return found


def clean_lake(root: Path) -> int:
    """Delete what unfinished exports left (hidden temporary files, part files no
    manifest lists); return how many files went. A lake without manifests gets one
    listing its files, so that they stay committed."""
    if not root.is_dir():
        return 0
    removed = 0
    for kind in ("bars", "trades"):
        for temporary in (root / kind).rglob(".part-*.parquet.tmp"):
            temporary.unlink()
            removed += 1
    files = _part_files(root)
    if not (root / MANIFESTS).is_dir():
        if files:
            _write_manifest(
                root, "before-manifests", [f.relative_to(root).as_posix() for f in files]
            )
        return removed
    committed = committed_files(root)
    for file in files:
        if file not in committed:
            file.unlink()
            removed += 1
    return removed


def _years(table: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """Split a table by the UTC year of ``ts`` (rows keep their order)."""
    years = pc.year(table.column("ts")).to_numpy()
    for year in np.unique(years):
        yield int(year), table.filter(pa.array(years == year))


# -- export ---------------------------------------------------------------------------


def export_lake(
    store: Store,
    root: str | Path,
    *,
    symbols: Sequence[str] | None = None,
    timeframe: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    trades: bool = True,
) -> LakeSummary:
    """Write the store's bars (and trades and instruments) under ``root``; see the module doc."""
    root = Path(root)
    wanted = {s.upper() for s in symbols} if symbols else None
    tf = str(Timeframe.parse(timeframe)) if timeframe else None
    summary = LakeSummary()
    clean_lake(root)
    commit = _Commit(root)
    for series in store.bar_summary():
        if (wanted and series["symbol"] not in wanted) or (tf and series["timeframe"] != tf):
            continue
        base = (
            root
            / "bars"
            / _segment("timeframe", series["timeframe"])
            / _segment("symbol", series["symbol"])
        )
        current: tuple[int, _PartitionFile] | None = None
        for batch in store.iter_bars(
            series["symbol"], series["timeframe"], start, end, batch_rows=WRITE_BATCH_ROWS
        ):
            for year, rows in _years(batch):  # batches come in time order
                if current is None or current[0] != year:
                    if current is not None:
                        current[1].close()
                    current = (year, commit.open(base / _segment("year", year), BAR_FILE_SCHEMA))
                    summary.files += 1
                    summary.partitions += 1
                current[1].write(rows.drop_columns(["symbol", "timeframe"]))
                summary.bars += rows.num_rows
        if current is not None:
            current[1].close()
    if trades:
        _export_trades(store, root, wanted, start, end, summary, commit)
    commit.commit()
    _export_instruments(store, root, wanted, summary)
    return summary


def _export_trades(
    store: Store,
    root: Path,
    wanted: set[str] | None,
    start: datetime | None,
    end: datetime | None,
    summary: LakeSummary,
    commit: _Commit,
) -> None:
    symbols = [
        r["symbol"]
        for r in store.query("SELECT DISTINCT symbol FROM trades ORDER BY symbol").to_pylist()
    ]
    for symbol in symbols:
        if wanted and symbol not in wanted:
            continue
        table = store.read_trades(symbol, start, end).cast(TRADE_SCHEMA)
        for year, rows in _years(table):
            directory = root / "trades" / _segment("symbol", symbol) / _segment("year", year)
            commit.write(directory, rows.drop_columns(["symbol"]))
            summary.files += 1
            summary.partitions += 1
            summary.trades += rows.num_rows


def _export_instruments(
    store: Store, root: Path, wanted: set[str] | None, summary: LakeSummary
) -> None:
    rows = [i.model_dump() for i in store.list_instruments() if not wanted or i.symbol in wanted]
    if not rows:
        return
    path = root / INSTRUMENTS_FILE
    if path.exists():  # keep instruments exported earlier, newest definition wins
        old = {r["symbol"]: r for r in pq.read_table(path).to_pylist()}
        rows = list({**old, **{r["symbol"]: r for r in rows}}.values())
    root.mkdir(parents=True, exist_ok=True)
    temporary = root / f".{INSTRUMENTS_FILE}.tmp"
    pq.write_table(pa.Table.from_pylist(rows), temporary, compression="zstd")
    os.replace(temporary, path)
    summary.instruments = len(rows)


# -- import ---------------------------------------------------------------------------


def _dataset(root: Path, kind: str) -> ds.Dataset | None:
    directory = root / kind
    if not directory.is_dir():
        return None
    schema = BAR_PARTITIONS if kind == "bars" else TRADE_PARTITIONS
    committed = committed_files(root)
    files = [str(f) for f in _part_files(root) if f in committed and f.is_relative_to(directory)]
    if not files:  # nothing exported yet, or only what an unfinished export left
        return None
    return ds.dataset(
        files,
        format="parquet",
        partitioning=ds.partitioning(schema, flavor="hive"),
        partition_base_dir=str(directory),
        exclude_invalid_files=False,
    )


def _filter(
    symbols: Sequence[str] | None,
    timeframe: str | None,
    start: datetime | None,
    end: datetime | None,
    with_timeframe: bool,
) -> ds.Expression | None:
    parts = []
    if symbols:
        parts.append(ds.field("symbol").isin([s.upper() for s in symbols]))
    if timeframe and with_timeframe:
        parts.append(ds.field("timeframe") == str(Timeframe.parse(timeframe)))
    if start is not None:
        parts.append(ds.field("ts") >= pa.scalar(start, BAR_SCHEMA.field("ts").type))
    if end is not None:
        parts.append(ds.field("ts") < pa.scalar(end, BAR_SCHEMA.field("ts").type))
    expression = None
    for part in parts:
        expression = part if expression is None else expression & part
    return expression


def _chunks(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(pending)
            pending, count = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def import_lake(
    store: Store,
    root: str | Path,
    *,
    symbols: Sequence[str] | None = None,
    timeframe: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> LakeSummary:
    """Read a lake written by :func:`export_lake` into ``store`` (idempotent writes)."""
    root = Path(root)
    if not (root / "bars").is_dir() and not (root / "trades").is_dir():
        raise InputError(
            f"{root} is not a MarketLake lake: it has no bars/ or trades/ "
            "folder; write one with `marketlake export --to DIR`",
            param="dir",
        )
    bars, trades = _dataset(root, "bars"), _dataset(root, "trades")
    summary = LakeSummary()
    summary.instruments = _import_instruments(store, root, symbols)
    if bars is not None:
        scanner = bars.scanner(
            filter=_filter(symbols, timeframe, start, end, True), columns=BAR_SCHEMA.names
        )
        for table in _chunks(scanner.to_batches(), WRITE_BATCH_ROWS):
            table = table.cast(BAR_SCHEMA)
            store.ensure_instruments(pc.unique(table.column("symbol")).to_pylist())
            summary.written += store.write_bars(table)
            summary.bars += table.num_rows
        summary.files += len(bars.files)
    if trades is not None:
        scanner = trades.scanner(
            filter=_filter(symbols, None, start, end, False), columns=TRADE_SCHEMA.names
        )
        for table in _chunks(scanner.to_batches(), WRITE_BATCH_ROWS):
            written = store.write_trades(table.cast(TRADE_SCHEMA))
            summary.written += written
            summary.trades += table.num_rows
        summary.files += len(trades.files)
    return summary


def _import_instruments(store: Store, root: Path, symbols: Sequence[str] | None) -> int:
    path = root / INSTRUMENTS_FILE
    if not path.exists():
        return 0
    wanted = {s.upper() for s in symbols} if symbols else None
    known = {i.symbol for i in store.list_instruments()}
    added = 0
    for row in pq.read_table(path).to_pylist():
        if row["symbol"] in known or (wanted and row["symbol"] not in wanted):
            continue
        store.add_instrument(Instrument(**{k: row[k] for k in Instrument.model_fields}))
        added += 1
    return added


# -- compaction -------------------------------------------------------------------------


def _leaf_partitions(root: Path) -> Iterator[tuple[Path, list[str]]]:
    """Every leaf partition folder and the key columns (inside the files) of its kind."""
    for path in sorted((root / "bars").glob("timeframe=*/symbol=*/year=*")):
        yield path, ["ts"]
    for path in sorted((root / "trades").glob("symbol=*/year=*")):
        yield path, ["source", "trade_id"]


def compact_lake(root: str | Path) -> LakeSummary:
    """Merge every partition's files into one, sorted by time, newest export winning."""
    root = Path(root)
    if not (root / "bars").is_dir() and not (root / "trades").is_dir():
        raise InputError(
            f"{root} is not a MarketLake lake: it has no bars/ or trades/ folder", param="dir"
        )
    summary = LakeSummary()
    clean_lake(root)
    committed = committed_files(root)
    commit = _Commit(root)
    replaced: list[Path] = []
    for directory, key in _leaf_partitions(root):
        files = sorted(f for f in directory.glob("part-*.parquet") if f in committed)
        summary.partitions += 1  # names sort by export time
        if len(files) < 2:
            summary.files += len(files)
            continue
        frames = [pl.read_parquet(f, hive_partitioning=False) for f in files]
        merged = pl.concat(frames, how="vertical_relaxed")
        unique = merged.unique(subset=key, keep="last", maintain_order=True).sort(
            "ts", maintain_order=True
        )
        commit.write(directory, unique.to_arrow().cast(pq.read_schema(files[-1])))
        replaced += files
        summary.files += 1
        summary.removed_files += len(files)
        summary.duplicates_dropped += merged.height - unique.height
    commit.commit()
    for old in replaced:  # listed by older manifests: their readers skip what is gone
        old.unlink()
    return summary
