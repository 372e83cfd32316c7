"""The PostgreSQL store: idempotent writes, exact counts, atomic batches, fast reads."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from marketlake.schema import BAR_SCHEMA, TRADE_SCHEMA
from marketlake.store import Store, WriteResult
from marketlake.store.postgres import PostgresStore
from tests.conftest import bars_for

pytestmark = pytest.mark.postgres


def _with(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), table.schema.field(name), values)


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("symbol", "ascending"), ("timeframe", "ascending"), ("ts", "ascending")])


def _all_bars(store: Store) -> pa.Table:
    return _sorted(store.query("SELECT * FROM bars").cast(BAR_SCHEMA))


def test_new_bars_are_inserted_and_read_back_identically(pg: Store) -> None:
    bars = bars_for(["AAPL", "BTCUSDT"])
    assert pg.write_bars(bars) == WriteResult(inserted=bars.num_rows)
    assert _all_bars(pg).equals(_sorted(bars))


def test_writing_the_same_bars_twice_inserts_nothing_new(pg: Store) -> None:
    bars = bars_for(["AAPL", "BTCUSDT"])
    pg.write_bars(bars)
    assert pg.write_bars(bars) == WriteResult(duplicates=bars.num_rows)
    assert pg.count_bars() == bars.num_rows


def test_overlapping_batch_inserts_only_the_new_part(pg: Store) -> None:
    bars = bars_for("BTCUSDT", start="2024-03-04", end="2024-03-06")
    pg.write_bars(bars.slice(0, 1000))
    result = pg.write_bars(bars.slice(500, 1000))
    assert result == WriteResult(inserted=500, duplicates=500)
    assert _all_bars(pg).equals(bars.slice(0, 1500))


def test_changed_values_count_as_conflicts_and_stay_as_stored(pg: Store) -> None:
    bars = bars_for("BTCUSDT", start="2024-03-04", end="2024-03-05").slice(0, 100)
    pg.write_bars(bars)
    close = bars.column("close").to_numpy().copy()
    close[:10] += 1.0
    changed = _with(bars, "close", pa.array(close))
    assert pg.write_bars(changed) == WriteResult(duplicates=90, conflicts=10)
    assert _all_bars(pg).equals(bars)


def test_replace_updates_conflicting_bars(pg: Store) -> None:
    bars = bars_for("BTCUSDT", start="2024-03-04", end="2024-03-05").slice(0, 100)
    pg.write_bars(bars)
    vwap = bars.column("vwap").to_numpy().copy()
    vwap[:10] = np.nan
    changed = _with(bars, "vwap", pa.array(vwap))
    changed = _with(changed, "source", pa.array(["fix"] * 100))
    extra = bars_for("BTCUSDT", start="2024-03-05", end="2024-03-06").slice(0, 5)
    batch = pa.concat_tables([changed, extra.cast(changed.schema)])
    result = pg.write_bars(batch, on_conflict="replace")
    assert result == WriteResult(inserted=5, duplicates=90, replaced=10)
    stored = _all_bars(pg)
    assert stored.slice(0, 10).column("source").to_pylist() == ["fix"] * 10
    assert all(math.isnan(v) for v in stored.slice(0, 10).column("vwap").to_pylist())
    assert stored.slice(10, 90).equals(bars.slice(10, 90))


def test_repeats_inside_one_batch_keep_the_first_row(pg: Store) -> None:
    bars = bars_for("BTCUSDT", start="2024-03-04", end="2024-03-05").slice(0, 10)
    other = _with(bars.slice(0, 3), "close", pc.add(bars.slice(0, 3).column("close"), 1.0))
    batch = pa.concat_tables([bars, bars.slice(5, 2), other])
    assert pg.write_bars(batch) == WriteResult(inserted=10, duplicates=2, conflicts=3)
    assert _all_bars(pg).equals(bars)


def test_nulls_nan_infinity_and_unicode_survive_the_round_trip(pg: Store) -> None:
    ts = pa.array(
        [
            datetime(1969, 7, 20, 20, 17, tzinfo=UTC),
            datetime(2024, 2, 29, tzinfo=UTC),
            datetime(2099, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ],
        BAR_SCHEMA.field("ts").type,
    )
    table = pa.table(
        {
            "symbol": ["X", "X.Y-1", "^GSPC"],
            "timeframe": ["1m", "1d", "5m"],
            "ts": ts,
            "open": [1.0, -0.0, 5e-324],
            "high": [math.inf, 2.0, 1e308],
            "low": [-math.inf, 0.5, 0.0],
            "close": [math.nan, 1.5, 1.0],
            "volume": [0.0, 1e12, 3.0],
            "trades": pa.array([None, 2**62, 0], pa.int64()),
            "vwap": [None, math.nan, 1.25],
            "source": ["", "é源", "a" * 300],
        },
        schema=BAR_SCHEMA,
    )
    assert pg.write_bars(table).inserted == 3
    stored = _all_bars(pg)
    expected = _sorted(table)
    for name in BAR_SCHEMA.names:
        got, want = stored.column(name).to_pylist(), expected.column(name).to_pylist()
        assert [repr(v) for v in got] == [repr(v) for v in want], name


def test_fast_read_path_equals_the_general_path(pg: Store) -> None:
    bars = bars_for(["AAPL", "MSFT"])
    pg.write_bars(bars)
    where = " WHERE symbol IN (?, ?) AND timeframe = ? AND ts >= ? ORDER BY symbol, ts"
    params = ["AAPL", "MSFT", "1m", datetime(2024, 3, 5, tzinfo=UTC)]
    fast = pg.query("SELECT * FROM bars" + where, params)
    general = pg.query("SELECT bars.* FROM bars" + where, params)
    assert fast.num_rows > 0
    assert fast.equals(general.cast(fast.schema))


def test_text_with_the_separator_falls_back_to_the_general_path(pg: Store) -> None:
    bars = bars_for("AAPL").slice(0, 3)
    pg.write_bars(_with(bars, "source", pa.array(["a\x1fb"] * 3)))
    assert pg.read_bars("AAPL", "1m").table.column("source").to_pylist() == ["a\x1fb"] * 3


def test_a_failing_batch_leaves_nothing_behind(pg: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    from marketlake.errors import StoreError
    from marketlake.store import pgwrite

    bars = bars_for("BTCUSDT", start="2024-03-04", end="2024-03-05")
    pg.write_bars(bars.slice(0, 10))
    changed = _with(bars, "close", pc.add(bars.column("close"), 1.0))

    def broken(conn: object, changed: pa.Table) -> None:
        raise psycopg.errors.DataException("simulated failure after the COPY")

    monkeypatch.setattr(pgwrite, "replace_bars", broken)
    with pytest.raises(StoreError, match="simulated failure"):
        pg.write_bars(changed, on_conflict="replace")
    assert _all_bars(pg).equals(bars.slice(0, 10))


def test_writes_inside_a_transaction_roll_back_together(pg: Store) -> None:
    bars = bars_for("AAPL")

    def write_then_fail() -> None:
        with pg.transaction():
            pg.write_bars(bars)
            pg.ensure_instruments(["AAPL"])
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert pg.count_bars() == 0
    assert pg.list_instruments() == []


def test_trades_are_written_once_per_source_symbol_and_id(pg: Store) -> None:
    n = 1000
    trades = pa.table(
        {
            "symbol": ["BTCUSDT"] * n,
            "ts": pa.array(
                np.arange(n, dtype=np.int64) * 1000 + 1_709_251_200_000_000,
                pa.timestamp("us", tz="UTC"),
            ),
            "price": np.linspace(60000, 61000, n),
            "size": np.full(n, 0.01),
            "side": pa.array(["buy", "sell", None, "buy"] * (n // 4)),
            "trade_id": [str(i) for i in range(n)],
            "source": ["binance"] * n,
        },
        schema=TRADE_SCHEMA,
    )
    assert pg.write_trades(trades.slice(0, 600)) == WriteResult(inserted=600)
    repeated = pa.concat_tables([trades, trades.slice(990, 10)])
    assert pg.write_trades(repeated) == WriteResult(inserted=400, duplicates=610)
    assert pg.read_trades("BTCUSDT").equals(trades)


def test_months_get_their_own_partitions(pg: PostgresStore) -> None:
    pg.write_bars(bars_for("BTCUSDT", start="2024-02-29", end="2024-03-02"))
    names = {
        r["relname"]
        for r in pg.query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'bars'::regclass"
        ).to_pylist()
    }
    assert {"bars_p2024_02", "bars_p2024_03"} <= names
    counts = pg.query(
        "SELECT tableoid::regclass::text AS part, count(*) AS n FROM bars GROUP BY 1 ORDER BY 1"
    ).to_pylist()
    assert [(r["part"].split(".")[-1], r["n"]) for r in counts] == [
        ("bars_p2024_02", 1440),
        ("bars_p2024_03", 1440),
    ]


def test_trades_without_any_side_are_written(pg: Store) -> None:
    trades = pa.table(
        {
            "symbol": ["ETHUSDT"] * 3,
            "ts": pa.array([1, 2, 3], pa.timestamp("us", tz="UTC")),
            "price": [1.0, 2.0, 3.0],
            "size": [1.0, 1.0, 1.0],
            "side": pa.nulls(3, pa.string()),
            "trade_id": ["a", "b", "c"],
            "source": ["csv"] * 3,
        },
        schema=TRADE_SCHEMA,
    )
    assert pg.write_trades(trades) == WriteResult(inserted=3)
    assert pg.read_trades("ETHUSDT").column("side").null_count == 3


def test_a_failing_query_is_a_store_error_with_the_server_message(pg: Store) -> None:
    from marketlake.errors import StoreError

    with pytest.raises(StoreError, match='column "nonsense" does not exist'):
        pg.query("SELECT * FROM bars WHERE nonsense = ?", [1])
    with pytest.raises(StoreError, match='relation "nowhere" does not exist'):
        pg.execute("DELETE FROM nowhere")
    assert pg.count_bars() == 0


def test_general_queries_keep_their_column_types_when_empty(pg: Store) -> None:
    table = pg.query(
        "SELECT symbol, count(*) AS n, min(created_at) AS first, "
        "bool_and(active) AS a FROM instruments GROUP BY symbol"
    )
    assert table.schema == pa.schema(
        [
            ("symbol", pa.string()),
            ("n", pa.int64()),
            ("first", pa.timestamp("us", tz="UTC")),
            ("a", pa.bool_()),
        ]
    )


def test_a_new_month_does_not_wait_for_open_readers(pg: Store) -> None:
    import psycopg

    from marketlake.store import open_store
    from tests.conftest import PG

    pg.write_bars(bars_for("BTCUSDT", start="2024-03-04", end="2024-03-05"))
    uri = PG.connect()
    schema = uri.rsplit("schema=", 1)[1]
    with psycopg.connect(PG.server, options=f"-c search_path={schema}") as reader:
        reader.execute("SELECT count(*) FROM bars").fetchone()  # holds its lock until commit
        with open_store(f"{uri}&options=-c%20lock_timeout%3D5000") as writer:
            result = writer.write_bars(bars_for("BTCUSDT", start="2024-05-01", end="2024-05-02"))
        assert result.inserted == 1440
        reader.rollback()


def test_an_exhausted_pool_is_a_store_error_naming_its_size(pg: Store) -> None:
    import threading

    from marketlake.errors import StoreError
    from tests.conftest import PG

    store = PostgresStore(f"{PG.connect()}&pool_max=1", pool_timeout_s=0.3)
    errors: list[str] = []

    def other_thread() -> None:
        try:
            store.count_bars()
        except StoreError as exc:
            errors.append(exc.message)

    try:
        with store.transaction():  # holds the only connection
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
    finally:
        store.close()
    assert errors == [
        "no connection to PostgreSQL at 127.0.0.1:5432 within 0.3 s: the server "
        "is down or every pooled connection is busy (pool_max=1)"
    ]
