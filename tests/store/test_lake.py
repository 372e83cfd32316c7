"""The Parquet lake: lossless export/import, hive layout other engines read, compaction, copy."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from marketlake.cli.app import cli
from marketlake.errors import InputError
from marketlake.schema import BAR_SCHEMA, TRADE_SCHEMA, Instrument
from marketlake.store import Store, WriteResult, open_store
from marketlake.store.lake import compact_lake, export_lake, import_lake
from marketlake.store.transfer import copy_store
from tests.conftest import bars_for, make_store


def _sorted(table: pa.Table, keys: tuple[str, ...] = ("symbol", "timeframe", "ts")) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys])


def _odd_bars() -> pa.Table:
    """Bars with nulls, NaN, infinities, an index symbol and a year boundary."""
    ts = [
        datetime(2023, 12, 31, 23, 59, tzinfo=UTC),
        datetime(2024, 1, 1, 0, 0, tzinfo=UTC),
        datetime(2024, 1, 1, 0, 1, 30, 123456, tzinfo=UTC),
    ]
    return pa.table(
        {
            "symbol": ["^GSPC"] * 3,
            "timeframe": ["1m"] * 3,
            "ts": pa.array(ts, BAR_SCHEMA.field("ts").type),
            "open": [1.0, -0.0, 5e-324],
            "high": [math.inf, 2.0, 1e308],
            "low": [-math.inf, 0.5, 0.0],
            "close": [math.nan, 1.5, 1.0],
            "volume": [0.0, 1e12, 3.0],
            "trades": pa.array([None, 2**62, 0], pa.int64()),
            "vwap": [None, math.nan, 1.25],
            "source": ["yahoo", "é源", ""],
        },
        schema=BAR_SCHEMA,
    )


def _trades(n: int = 50) -> pa.Table:
    return pa.table(
        {
            "symbol": ["BTCUSDT"] * n,
            "ts": pa.array(
                np.arange(n, dtype=np.int64) * 60_000_000 + 1_704_067_000_000_000,
                pa.timestamp("us", tz="UTC"),
            ),
            "price": np.linspace(42000, 42100, n),
            "size": np.full(n, 0.5),
            "side": pa.array(["buy", None] * (n // 2)),
            "trade_id": [f"t{i}" for i in range(n)],
            "source": ["binance"] * n,
        },
        schema=TRADE_SCHEMA,
    )


def _fill(store: Store) -> tuple[pa.Table, pa.Table]:
    bars = pa.concat_tables(
        [bars_for(["AAPL", "BTCUSDT"], start="2024-03-04", end="2024-03-05"), _odd_bars()]
    )
    store.write_bars(bars)
    store.add_instrument(Instrument(symbol="AAPL", name="Apple", exchange="XNAS"))
    store.ensure_instruments(["BTCUSDT", "^GSPC"])
    trades = _trades()
    store.write_trades(trades)
    return bars, trades


def _repr_rows(table: pa.Table) -> list[str]:
    return [repr(row) for row in table.to_pylist()]


@pytest.mark.parametrize("target", ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_export_then_import_is_lossless_on_every_column(
    duck: Store, target: str, tmp_path: Path
) -> None:
    bars, trades = _fill(duck)
    summary = export_lake(duck, tmp_path)
    assert (summary.bars, summary.trades, summary.instruments) == (bars.num_rows, 50, 3)
    for other in make_store(target):
        result = import_lake(other, tmp_path)
        assert result.written == WriteResult(inserted=bars.num_rows + 50)
        stored = _sorted(other.query("SELECT * FROM bars").cast(BAR_SCHEMA))
        assert _repr_rows(stored) == _repr_rows(_sorted(bars))
        assert other.read_trades("BTCUSDT").cast(TRADE_SCHEMA).equals(trades)
        assert other.list_instruments() == duck.list_instruments()
        assert import_lake(other, tmp_path).written == WriteResult(duplicates=bars.num_rows + 50)


def test_layout_is_hive_partitioned_zstd_without_partition_columns_inside(
    duck: Store, tmp_path: Path
) -> None:
    _fill(duck)
    export_lake(duck, tmp_path)
    index = sorted(
        p.relative_to(tmp_path / "bars").parent.as_posix()
        for p in (tmp_path / "bars").rglob("*.parquet")
    )
    assert index == [
        "timeframe=1m/symbol=%5EGSPC/year=2023",
        "timeframe=1m/symbol=%5EGSPC/year=2024",
        "timeframe=1m/symbol=AAPL/year=2024",
        "timeframe=1m/symbol=BTCUSDT/year=2024",
    ]
    [file] = (tmp_path / "bars/timeframe=1m/symbol=AAPL/year=2024").glob("*.parquet")
    meta = pq.ParquetFile(file)
    assert meta.schema_arrow.names == [
        "ts",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "trades",
        "vwap",
        "source",
    ]
    assert meta.schema_arrow.field("ts").type == pa.timestamp("us", tz="UTC")
    assert meta.metadata.row_group(0).column(0).compression == "ZSTD"
    assert [p.name for p in (tmp_path / "trades").iterdir()] == ["symbol=BTCUSDT"]


def test_duckdb_and_polars_read_the_lake_without_marketlake(duck: Store, tmp_path: Path) -> None:
    bars, _ = _fill(duck)
    export_lake(duck, tmp_path)
    glob = str(tmp_path / "bars" / "**" / "*.parquet")
    rows = duckdb.sql(
        f"SELECT symbol, count(*), min(ts), typeof(min(ts)) FROM read_parquet('{glob}', "
        "hive_partitioning = true) GROUP BY symbol ORDER BY symbol"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [("AAPL", 390), ("BTCUSDT", 1440), ("^GSPC", 3)]
    assert rows[2][3] == "TIMESTAMP WITH TIME ZONE"
    frame = (
        pl.scan_parquet(glob, hive_partitioning=True)
        .filter(pl.col("symbol") == "^GSPC")
        .sort("ts")
        .collect()
    )
    assert frame["ts"].dtype == pl.Datetime("us", "UTC")
    assert frame["ts"].to_list() == bars.slice(bars.num_rows - 3).column("ts").to_pylist()


def test_export_filters_by_symbol_timeframe_and_half_open_range(
    duck: Store, tmp_path: Path
) -> None:
    _fill(duck)
    duck.write_bars(bars_for("AAPL", "5m", start="2024-03-04", end="2024-03-05"))
    summary = export_lake(
        duck,
        tmp_path,
        symbols=["aapl"],
        timeframe="5m",
        start=datetime(2024, 3, 4, 15, tzinfo=UTC),
        end=datetime(2024, 3, 4, 16, tzinfo=UTC),
        trades=False,
    )
    assert summary.bars == 12
    table = pq.read_table(tmp_path / "bars")
    assert set(table.column("timeframe").to_pylist()) == {"5m"}
    assert min(table.column("ts").to_pylist()) == datetime(2024, 3, 4, 15, tzinfo=UTC)
    assert max(table.column("ts").to_pylist()) == datetime(2024, 3, 4, 15, 55, tzinfo=UTC)


def test_compaction_merges_each_partition_into_one_file_newest_winning(
    duck: Store, tmp_path: Path
) -> None:
    bars = bars_for("BTCUSDT", start="2024-03-04", end="2024-03-05")
    duck.write_bars(bars.slice(0, 1000))
    export_lake(duck, tmp_path)
    changed = bars.slice(900, 540)
    changed = changed.set_column(
        changed.schema.get_field_index("source"), "source", pa.array(["fixed"] * 540)
    )
    changed = changed.set_column(
        changed.schema.get_field_index("close"),
        "close",
        pa.array(np.asarray(changed.column("close")) + 1.0),
    )
    assert duck.write_bars(changed, on_conflict="replace").replaced == 100
    export_lake(duck, tmp_path, start=datetime(2024, 3, 4, 15, tzinfo=UTC))
    partition = tmp_path / "bars/timeframe=1m/symbol=BTCUSDT/year=2024"
    assert len(list(partition.glob("*.parquet"))) == 2
    summary = compact_lake(tmp_path)
    assert (summary.removed_files, summary.duplicates_dropped) == (2, 100)
    [file] = partition.glob("*.parquet")
    table = pq.read_table(file)
    assert table.num_rows == 1440
    assert table.column("ts").to_pylist() == bars.column("ts").to_pylist()
    sources = table.column("source").to_pylist()
    assert sources[:900] == ["synthetic"] * 900
    assert sources[900:] == ["fixed"] * 540
    assert table.column("close").to_pylist()[900:] == changed.column("close").to_pylist()
    assert compact_lake(tmp_path).removed_files == 0


def test_importing_something_that_is_not_a_lake_says_how_to_make_one(
    duck: Store, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match=r"not a MarketLake lake.*marketlake export --to DIR"):
        import_lake(duck, tmp_path)
    with pytest.raises(InputError, match="not a MarketLake lake"):
        compact_lake(tmp_path)


@pytest.mark.postgres
def test_copy_between_backends_is_complete_and_idempotent(duck: Store) -> None:
    bars, trades = _fill(duck)
    for pg in make_store("postgres"):
        result = copy_store(duck, pg)
        assert result == {
            "instruments": 3,
            "bars": WriteResult(bars.num_rows).as_dict(),
            "trades": WriteResult(50).as_dict(),
        }
        stored = _sorted(pg.query("SELECT * FROM bars").cast(BAR_SCHEMA))
        assert _repr_rows(stored) == _repr_rows(_sorted(bars))
        assert pg.read_trades("BTCUSDT").cast(TRADE_SCHEMA).equals(trades)
        assert bool(pg.auto_registered(["BTCUSDT"]))
        assert not bool(pg.auto_registered(["AAPL"]))
        again = copy_store(duck, pg)
        assert again["bars"]["duplicates"] == bars.num_rows
        assert again["instruments"] == 0


def test_cli_export_compact_import_and_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = f"duckdb:///{tmp_path}/a.duckdb"
    with open_store(source) as store:
        bars, _ = _fill(store)
    lake = tmp_path / "lake"
    assert cli(["--store", source, "export", "--to", str(lake), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bars"] == bars.num_rows
    assert cli(["--store", source, "export", "--to", str(lake), "-s", "AAPL", "--json"]) == 0
    capsys.readouterr()
    assert cli(["lake", "compact", str(lake), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["duplicates_dropped"] == 390
    target = f"duckdb:///{tmp_path}/b.duckdb"
    assert cli(["--store", target, "import-lake", str(lake), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["inserted"], out["duplicates"]) == (bars.num_rows + 50, 0)
    third = f"duckdb:///{tmp_path}/c.duckdb"
    assert cli(["copy", "--from", target, "--to", third, "--timeframe", "1m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bars"]["inserted"] == bars.num_rows
    assert cli(["copy", "--from", target, "--to", target]) == 2
    assert "same store" in capsys.readouterr().err
    assert cli(["--store", target, "import-lake", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_import_filters_by_symbol_timeframe_and_range(duck: Store, tmp_path: Path) -> None:
    _fill(duck)
    export_lake(duck, tmp_path)
    for other in make_store("duckdb"):
        summary = import_lake(
            other,
            tmp_path,
            symbols=["btcusdt"],
            timeframe="1m",
            start=datetime(2024, 3, 4, 1, tzinfo=UTC),
            end=datetime(2024, 3, 4, 2, tzinfo=UTC),
        )
        assert summary.bars == 60
        assert other.count_bars() == 60
        assert summary.trades == 0  # the trades are of another time
        assert [i.symbol for i in other.list_instruments()] == ["BTCUSDT"]


def test_copy_takes_symbols_timeframe_and_range(duck: Store) -> None:
    _fill(duck)
    for other in make_store("duckdb"):
        result = copy_store(
            duck,
            other,
            symbols=["BTCUSDT"],
            timeframe="1m",
            start=datetime(2024, 1, 1, 0, 10, tzinfo=UTC),
            end=datetime(2024, 3, 4, 0, 30, tzinfo=UTC),
        )
        assert result["bars"]["inserted"] == 30
        assert result["trades"]["inserted"] == 36  # trades 14 to 49: 00:10:40 onwards
        assert result["instruments"] == 1


def test_cli_prints_tables_for_people_and_refuses_empty_or_missing_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = f"duckdb:///{tmp_path}/a.duckdb"
    with open_store(source) as store:
        store.write_bars(bars_for("AAPL", start="2024-03-04", end="2024-03-05"))
    lake = tmp_path / "lake"
    assert cli(["--store", source, "export", "--to", str(lake)]) == 0
    out = capsys.readouterr().out
    assert "exported to" in out
    assert "390" in out
    assert cli(["--store", source, "export", "--to", str(lake), "--symbols", " , "]) == 2
    assert "--symbols is empty" in capsys.readouterr().err
    assert cli(["lake", "compact", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    target = f"duckdb:///{tmp_path}/b.duckdb"
    assert cli(["copy", "--from", source, "--to", target]) == 0
    assert "bars inserted" in capsys.readouterr().out
