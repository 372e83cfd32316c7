"""Backtests on stored bars: loading (with on-the-fly roll-ups), storing and reading results."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from marketlake.backtest import BacktestConfig, get_backtest, list_backtests, run_backtest
from marketlake.backtest.data import Bars, divides, load_bars, split_symbols
from marketlake.backtest.runs import equity_points
from marketlake.errors import InputError, NotFoundError
from marketlake.schema import BAR_SCHEMA, Timeframe
from marketlake.store import Store
from marketlake.timeseries.aggregate import rollup
from tests.conftest import bars_for

START = datetime(2024, 3, 4, tzinfo=UTC)
END = datetime(2024, 3, 9, tzinfo=UTC)


def stored(store: Store, symbols: list[str], timeframe: str = "1m") -> pa.Table:
    table = bars_for(symbols, timeframe, "2024-03-04", "2024-03-09")
    store.ensure_instruments(symbols)
    store.write_bars(table)
    return table


def count_rows(store: Store) -> int:
    return len(store.select_rows("backtests"))


def same_bars(got: Bars, table: pa.Table) -> None:
    assert got.symbol == table.column("symbol")[0].as_py()
    np.testing.assert_array_equal(got.ts, table.column("ts").cast(pa.int64()).to_numpy())
    for name in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(got, name), table.column(name).to_numpy())


def test_bars_of_the_asked_timeframe_come_straight_from_the_store(store: Store) -> None:
    table = stored(store, ["AAPL"], "1h")
    [got] = load_bars(store, ["aapl"], "1h", START, END)
    same_bars(got, table)


def test_a_missing_timeframe_is_rolled_up_from_the_finest_stored_one(store: Store) -> None:
    minutes = stored(store, ["AAPL", "MSFT"])
    got = load_bars(store, ["AAPL", "MSFT"], "1h", START, END)
    rolled = rollup(minutes, "1h")
    for bars in got:
        same_bars(bars, rolled.filter(pa.compute.equal(rolled.column("symbol"), bars.symbol)))
    assert [len(b) for b in got] == [7 * 5, 7 * 5]  # 7 hourly buckets (09:30-16:00 NY) a day


def test_a_roll_up_cuts_to_the_asked_range(store: Store) -> None:
    stored(store, ["AAPL"])
    start = datetime(2024, 3, 5, 15, tzinfo=UTC)
    [got] = load_bars(store, ["AAPL"], "1h", start, datetime(2024, 3, 5, 18, tzinfo=UTC))
    assert [got.time(i)[11:13] for i in range(len(got))] == ["15", "16", "17"]


def test_an_empty_range_is_rejected(store: Store) -> None:
    with pytest.raises(InputError, match="must be before end"):
        load_bars(store, ["AAPL"], "1h", END, START)


def test_a_symbol_without_bars_says_what_to_ingest(store: Store) -> None:
    stored(store, ["AAPL"], "1d")
    with pytest.raises(
        NotFoundError,
        match=r"no AAPL bars at 1h .* stored timeframes of AAPL: "
        r"1d\. Ingest some first",
    ):
        load_bars(store, ["AAPL"], "1h", START, END)
    with pytest.raises(NotFoundError, match="stored timeframes of MSFT: none"):
        load_bars(store, ["MSFT"], "1d", START, END)


@pytest.mark.parametrize(
    ("source", "target", "ok"),
    [
        ("1m", "1h", True),
        ("5m", "1h", True),
        ("7m", "1h", False),
        ("1h", "1h", False),
        ("1h", "1d", True),
        ("1d", "1w", True),
        ("1h", "1mo", True),
        ("1w", "1mo", False),
        ("1mo", "1mo", False),
        ("4h", "1d", True),
        ("1d", "4h", False),
    ],
)
def test_which_timeframes_roll_up_into_which(source: str, target: str, ok: bool) -> None:
    assert divides(Timeframe.parse(source), Timeframe.parse(target)) is ok


def test_bars_split_into_one_array_set_per_symbol_in_symbol_order() -> None:
    table = bars_for(["MSFT", "AAPL"], "1h")
    parts = split_symbols(table.take(np.random.default_rng(0).permutation(table.num_rows)))
    assert [p.symbol for p in parts] == ["AAPL", "MSFT"]
    aapl = table.filter(pa.compute.equal(table.column("symbol"), "AAPL"))
    np.testing.assert_array_equal(np.sort(parts[0].close), np.sort(aapl.column("close")))
    assert split_symbols(table.slice(0, 0)) == []


def test_a_run_is_stored_and_read_back(store: Store) -> None:
    stored(store, ["AAPL"])
    result = run_backtest(
        store,
        "sma_cross",
        {"fast": "5", "slow": "20"},
        symbols=["aapl"],
        timeframe="15m",
        start=START,
        end=END,
        config=BacktestConfig(commission_bps=5),
    )
    assert result.id is not None
    record = get_backtest(store, result.id)
    assert record["status"] == "succeeded"
    assert record["stats"] == result.stats
    assert record["request"]["params"] == {"fast": 5, "slow": 20}
    assert record["request"]["symbols"] == ["AAPL"]
    assert record["request"]["config"]["commission_bps"] == 5
    assert len(record["trades"]) == result.trades.num_rows > 0
    assert record["trades"][0]["entry_time"].endswith("Z")
    assert record["equity"][-1][1] == pytest.approx(result.stats["final_equity"])
    assert [r["id"] for r in list_backtests(store)] == [result.id]


def test_a_failing_run_stores_nothing(store: Store) -> None:
    stored(store, ["AAPL"])
    with pytest.raises(InputError, match="needs at least 301 bars"):
        run_backtest(
            store,
            "sma_cross",
            {"slow": 300},
            symbols=["AAPL"],
            timeframe="1h",
            start=START,
            end=END,
        )
    with pytest.raises(InputError, match="unknown parameter"):
        run_backtest(store, "sma_cross", {"sloww": 300}, symbols=["AAPL"])
    assert count_rows(store) == 0


def test_unknown_backtest_ids_are_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError, match="unknown backtest 'nope'"):
        get_backtest(store, "nope")


def test_synthetic_runs_need_no_store_and_a_range() -> None:
    result = run_backtest(
        None,
        "buy_and_hold",
        symbols=["BTCUSDT"],
        timeframe="1h",
        start=START,
        end=END,
        synthetic=True,
        config=BacktestConfig(fractional=True),
    )
    assert result.id is None
    assert result.stats["bars"] == 5 * 24
    with pytest.raises(InputError, match="synthetic data needs both start and end"):
        run_backtest(None, "buy_and_hold", symbols=["AAPL"], synthetic=True)
    with pytest.raises(InputError, match="no store given"):
        run_backtest(None, "buy_and_hold", symbols=["AAPL"])
    with pytest.raises(InputError, match="at least one symbol"):
        run_backtest(None, "buy_and_hold", symbols=[])


def test_stored_equity_keeps_the_lowest_and_last_points() -> None:
    result = run_backtest(
        None,
        "sma_cross",
        {"fast": 5, "slow": 20},
        symbols=["BTCUSDT"],
        timeframe="1m",
        start=START,
        end=END,
        synthetic=True,
        config=BacktestConfig(fractional=True),
    )
    points = equity_points(result, limit=300)
    assert len(points) <= 301
    values = [v for _, v in points]
    assert min(values) == pytest.approx(result.equity.min())
    assert max(values) == pytest.approx(result.equity.max())
    assert points[-1][1] == pytest.approx(result.equity[-1])


def test_stored_trades_round_trip_as_one_dict_per_trade(store: Store) -> None:
    """Stored as columns (12 significant digits), read back as records with ISO times."""
    from marketlake.backtest.runs import trade_records

    stored(store, ["AAPL"])
    result = run_backtest(
        store,
        "sma_cross",
        {"fast": 5, "slow": 20},
        symbols=["AAPL"],
        timeframe="5m",
        start=START,
        end=END,
    )
    assert result.id is not None
    back = get_backtest(store, result.id)["trades"]
    fresh = trade_records(result.trades)
    assert [t["entry_time"] for t in back] == [t["entry_time"] for t in fresh]
    assert back[0]["entry_time"] == result.trades.column("entry_time")[
        0
    ].as_py().isoformat().replace("+00:00", "Z")
    for got, want in zip(back, fresh, strict=True):
        assert got["pnl"] == pytest.approx(want["pnl"], rel=1e-11)
        assert got["exit_reason"] == want["exit_reason"]
    assert back[-1]["exit_time"] is None
    assert back[-1]["exit_reason"] == "open"


def test_significant_digits_keep_values_short_and_close() -> None:
    from marketlake.backtest.runs import iso_strings, significant

    values = np.array([-298.30000000000007, 0.0, 3.3e-9, 123456789.123456789, 5e-320, np.inf])
    assert significant(values).tolist() == [-298.3, 0.0, 3.3e-9, 123456789.123, 5e-320, np.inf]
    assert iso_strings(np.array([0, 90_000_000], dtype=np.int64)) == [
        "1970-01-01T00:00:00Z",
        "1970-01-01T00:01:30Z",
    ]
    assert iso_strings(np.array([1], dtype=np.int64)) == ["1970-01-01T00:00:00.000001Z"]


def test_a_synthetic_range_without_a_session_says_how_many_bars_are_needed() -> None:
    saturday = datetime(2024, 3, 9, tzinfo=UTC)
    with pytest.raises(InputError, match=r"needs at least 2 bars, but AAPL has 0 1h bars"):
        run_backtest(
            None,
            "buy_and_hold",
            symbols=["AAPL"],
            timeframe="1h",
            start=saturday,
            end=datetime(2024, 3, 10, tzinfo=UTC),
            synthetic=True,
        )


def holey_store(store: Store) -> None:
    """AAPL 1h for 2024-01..06 and 2026-11..12 only (2.5 empty years between)."""
    store.ensure_instruments(["AAPL"])
    store.write_bars(bars_for(["AAPL"], "1h", "2024-01-02", "2024-07-01"))
    store.write_bars(bars_for(["AAPL"], "1h", "2026-11-02", "2026-12-01"))


def test_a_hole_of_years_is_reported_with_the_result(duck: Store) -> None:
    holey_store(duck)
    result = run_backtest(
        duck, "sma_cross", {"fast": 5, "slow": 20}, symbols=["AAPL"], timeframe="1h", save=False
    )
    [note] = result.notes
    assert note.startswith("AAPL 1h: no bars from 2024-06-28T19:00:00Z to 2026-11-02T14:00:00Z")
    assert "(857 days)" in note


def test_a_hole_of_years_is_refused_on_request_and_normal_closures_are_not_holes(
    duck: Store,
) -> None:
    from marketlake.errors import DataError

    holey_store(duck)
    with pytest.raises(DataError, match="no bars from 2024-06-28T19:00:00Z"):
        run_backtest(
            duck, "sma_cross", {}, symbols=["AAPL"], timeframe="1h", save=False, on_hole="refuse"
        )
    # weekends, holidays (Good Friday, Memorial Day, July 4th) are no holes
    closed = run_backtest(
        duck,
        "sma_cross",
        {},
        symbols=["AAPL"],
        timeframe="1h",
        start=datetime(2024, 1, 2, tzinfo=UTC),
        end=datetime(2024, 7, 1, tzinfo=UTC),
        save=False,
        on_hole="refuse",
    )
    assert closed.notes == []
    with pytest.raises(InputError, match="--on-hole 'split' must be report or refuse"):
        run_backtest(
            duck, "sma_cross", {}, symbols=["AAPL"], timeframe="1h", save=False, on_hole="split"
        )


def test_a_portfolio_on_adjusted_bars_is_not_hit_by_a_split(store: Store) -> None:
    """A 2:1 split halves the stored prices; on raw bars a held position loses half its value
    overnight, on adjusted bars (`backtest portfolio --adjusted`) nothing happens."""
    from marketlake.backtest.runs import run_portfolio_backtest
    from marketlake.timeseries.adjust import ACTION_SCHEMA

    days = [datetime(2024, 1, d, tzinfo=UTC) for d in range(2, 12)]
    rows = {"XYZ": [100.0] * 5 + [50.0] * 5, "ABC": [20.0] * 10}  # XYZ splits 2:1 on day 5
    store.ensure_instruments(list(rows))
    for symbol, closes in rows.items():
        store.write_bars(
            pa.table(
                {
                    "symbol": [symbol] * 10, "timeframe": ["1d"] * 10, "ts": days,
                    "open": closes, "high": closes, "low": closes, "close": closes,
                    "volume": [1000.0] * 10, "trades": [None] * 10, "vwap": closes,
                    "source": ["test"] * 10,
                }
            ).cast(BAR_SCHEMA)
        )  # fmt: skip
    store.write_actions(
        pa.table(
            {"symbol": ["XYZ"], "ts": [days[5]], "kind": ["split"], "value": [2.0],
             "source": ["test"]},
            schema=ACTION_SCHEMA,
        )
    )  # fmt: skip

    def final(adjusted: bool) -> float:
        result = run_portfolio_backtest(
            store, "equal_weight", symbols=["XYZ", "ABC"], timeframe="1d", save=False,
            adjusted=adjusted,
        )  # fmt: skip
        return float(result.stats["final_equity"])

    raw, adjusted = final(False), final(True)
    assert adjusted == pytest.approx(10_000.0)  # flat prices once the split is applied
    assert raw < 9_000.0  # half of the XYZ half lost on the split day
