"""Roll-up rules beyond the pandas comparisons: sessions, partial buckets, errors, the
compiled kernels, symbol runs and trading calendars."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from marketlake.errors import ConfigError, InputError
from marketlake.ingest.rollups import aggregate_store, rollup_spans, rollup_targets
from marketlake.schema import BAR_SCHEMA, Instrument, Timeframe, to_epoch_us
from marketlake.store import open_store
from marketlake.store.base import Store
from marketlake.timeseries import kernels
from marketlake.timeseries.aggregate import bucket_end, check_rollup, rollup, rollup_bars
from marketlake.timeseries.columns import Groups, SortedBars, string_runs, take_rows
from marketlake.timeseries.sessions import Sessions, calendar_name, sessions_for
from tests.conftest import bars_for


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def us(text: str) -> int:
    return to_epoch_us(utc(text))


STOCK = Instrument(symbol="AAPL", exchange="XNYS")


def test_a_us_stock_day_is_its_new_york_session_in_winter_and_summer() -> None:
    """09:30-16:00 New York is 14:30-21:00 UTC in winter and 13:30-20:00 in summer."""
    minutes = bars_for("AAPL", "1m", "2024-03-08", "2024-03-12")  # DST began on the 10th
    days = rollup(minutes, "1d", instruments={"AAPL": STOCK})
    assert days.column("ts").to_pylist() == [utc("2024-03-08"), utc("2024-03-11")]
    first = minutes.filter(
        pa.compute.equal(minutes.column("ts"), pa.scalar(utc("2024-03-11T13:30")))
    )
    assert days.column("open")[1].as_py() == first.column("open")[0].as_py()


def test_pre_market_bars_stay_out_of_the_daily_bar() -> None:
    minutes = bars_for("AAPL", "1m", "2024-03-04", "2024-03-05")
    early = minutes.slice(0, 1).set_column(
        2, "ts", pa.array([utc("2024-03-04T13:00")], BAR_SCHEMA.field("ts").type)
    )
    early = early.set_column(5, "low", pa.array([0.01])).cast(BAR_SCHEMA)
    days = rollup(pa.concat_tables([early, minutes]), "1d")
    assert days.column("low")[0].as_py() == pa.compute.min(minutes.column("low")).as_py()
    assert rollup(early, "1d").num_rows == 0


def test_half_day_sessions_end_at_1300_new_york() -> None:
    minutes = bars_for("AAPL", "1m", "2024-11-29", "2024-11-30")
    assert minutes.num_rows == 210  # 09:30-13:00
    (day,) = rollup(minutes, "1d").to_pylist()
    assert day["close"] == minutes.column("close")[-1].as_py()
    assert bucket_end(STOCK, Timeframe.parse("1d"), us("2024-11-29")) == us("2024-11-29T18:00")


def test_the_last_bucket_is_partial_until_its_session_or_bucket_ends() -> None:
    crypto = bars_for("BTCUSDT", "1m", "2024-03-04", "2024-03-04T10:30")
    assert rollup_bars(crypto, "1h", now=utc("2024-03-04T10:45")).partial == {
        "BTCUSDT": utc("2024-03-04T10:00")
    }
    assert rollup_bars(crypto, "1h", now=utc("2024-03-04T11:00")).partial == {}
    stock = bars_for("AAPL", "1m", "2024-03-04", "2024-03-09")
    friday_evening = utc("2024-03-08T22:00")
    assert rollup_bars(stock, "1w", now=friday_evening).partial == {}  # the week's trading ended
    assert rollup_bars(stock, "1mo", now=friday_evening).partial == {"AAPL": utc("2024-03-01")}
    assert rollup_bars(stock, "1d", now=utc("2024-03-08T20:59")).partial == {
        "AAPL": utc("2024-03-08")
    }


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("1m", "1m"),
        ("5m", "7m"),
        ("1h", "30m"),
        ("1d", "1h"),
        ("1w", "1mo"),
        ("2d", "3d"),
    ],
)
def test_targets_must_be_coarser_whole_multiples(source: str, target: str) -> None:
    with pytest.raises(InputError, match=f"cannot roll {source} bars up to {target}"):
        check_rollup(source, target)


def test_rollup_targets_keeps_the_usable_ones_finest_first() -> None:
    got = rollup_targets("1m", ["1mo", "1d", "7m", "5m", "1w", "1h"])
    assert [str(t) for t in got] == ["5m", "7m", "1h", "1d", "1w", "1mo"]
    assert [str(t) for t in rollup_targets("1d", ["5m", "1h", "1w", "1mo"])] == ["1w", "1mo"]


def test_bars_of_several_timeframes_are_refused() -> None:
    table = pa.concat_tables(
        [
            bars_for("AAPL", "1m", "2024-03-04", "2024-03-05"),
            bars_for("AAPL", "5m", "2024-03-04", "2024-03-05"),
        ]
    )
    with pytest.raises(InputError, match=r"several timeframes \(1m, 5m\)"):
        rollup(table, "1h")


def test_an_empty_table_rolls_up_to_an_empty_table() -> None:
    assert rollup(BAR_SCHEMA.empty_table(), "1h").num_rows == 0


def test_store_rollups_build_weeks_from_days_and_report_the_partial_bar(duck: Store) -> None:
    minutes = bars_for("BTCUSDT", "1m", "2024-03-04", "2024-03-13")
    duck.write_bars(minutes)
    now = utc("2024-03-12T12:00")
    results = aggregate_store(duck, None, "1m", ["1w", "1d"], now=now)
    assert [(r.timeframe, r.source, r.bars, r.partial) for r in results] == [
        ("1d", "1m", 9, utc("2024-03-12")),
        ("1w", "1d", 2, utc("2024-03-11")),
    ]
    weeks_from_days = rollup(rollup(minutes, "1d"), "1w")  # not from minutes: sums differ
    assert duck.read_bars("BTCUSDT", "1w").table.equals(weeks_from_days)
    again = aggregate_store(duck, ["btcusdt"], "1m", ["1d"], utc("2024-03-05"), utc("2024-03-06"))
    assert (again[0].bars, again[0].written.duplicates) == (1, 1)


def test_rolling_up_several_spans_at_once_equals_one_symbol_at_a_time(
    duck: Store, tmp_path: Path
) -> None:
    """rollup_spans (what ingest runs) stores exactly what aggregate_store does per symbol
    over its span, each symbol touching only the buckets of its own span."""
    spans = {
        "AAPL": (utc("2024-03-05T14:30"), utc("2024-03-07T15:59")),
        "BTCUSDT": (utc("2024-03-04"), utc("2024-03-12T23:59")),
    }
    targets = ["5m", "1h", "1d", "1w", "1mo"]
    with open_store(f"duckdb:///{tmp_path}/one.duckdb") as one:
        for store in (duck, one):
            store.ensure_instruments(list(spans))
            for symbol in spans:
                store.write_bars(bars_for(symbol, "1m", "2024-03-01", "2024-03-14"))
        counts = rollup_spans(duck, spans, "1m", targets)
        for symbol, (first, last) in spans.items():
            rolled = aggregate_store(
                one, [symbol], "1m", targets, first, last + timedelta(microseconds=1)
            )
            assert counts[symbol] == sum(r.bars for r in rolled)
        for tf in targets:
            assert duck.read_bars(list(spans), tf).table.equals(
                one.read_bars(list(spans), tf).table
            ), tf


# -- kernels: the compiled loops equal their Python source ------------------------------


def test_the_row_kernel_compiled_and_interpreted_agree() -> None:
    table = bars_for("AAPL", "1m", "2024-03-04", "2024-03-05")
    cols = [table.column(c).to_numpy().copy() for c in ("open", "high", "low", "close", "volume")]
    cols[1][3], cols[0][4], cols[4][5] = 0.5, np.nan, -1.0
    ts = table.column("ts").cast(pa.int64()).to_numpy().copy()
    ts[7], ts[9] = ts[8], ts[9] + 1
    args = (*cols, ts, np.array([0]), np.array([len(ts)]), np.array([60_000_000]), np.array([0]))
    flags, count = kernels.row_flags(*args)
    python = np.empty(len(ts), np.uint8)
    assert kernels._row_checks(*args, python) == count == 5
    assert np.array_equal(flags, python)
    assert flags[[3, 4, 5, 8, 9]].tolist() == [
        kernels.OHLC,
        kernels.PRICE,
        kernels.VOLUME,
        kernels.REPEATED,
        kernels.MISALIGNED,
    ]


def test_the_stale_jump_bucket_and_reduce_kernels_agree_with_their_source() -> None:
    close = np.array([1.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0])
    volume = np.ones(8)
    first, last = np.empty(8, np.int64), np.empty(8, np.int64)
    n = kernels._stale_scan(close, volume, 3, first, last)
    assert (first[:n].tolist(), last[:n].tolist()) == ([1, 5], [4, 7])
    assert [a.tolist() for a in kernels.stale_runs(close, volume, 3)] == [[1, 5], [4, 7]]
    ts = np.arange(8) * 60
    upper, lower = np.array([1.6]), np.array([0.9])
    splits, outliers, counts = np.empty(8, np.int64), np.empty(8, np.int64), np.zeros(2, np.int64)
    kernels._jump_scan(close, close, ts, 60, 512, upper, lower, 1.4, splits, outliers, counts)
    compiled = kernels.price_jumps(close, close, ts, 60, 512, upper, lower, 1.4)
    assert (
        [splits[: counts[0]].tolist(), outliers[: counts[1]].tolist()]
        == [c.tolist() for c in compiled]
        == [[1, 5], [1]]
    )  # halving, then x1.5: both split-like
    runs = np.array([0, 5])
    out = np.empty(8, np.int64)
    n = kernels._bucket_starts(ts * 1_000_000, runs, 120_000_000, 0, out)
    assert out[:n].tolist() == kernels.bucket_groups(ts * 1_000_000, runs, 120_000_000).tolist()
    groups = Groups(np.array([0, 3]), np.array([3, 8]))
    outs = [np.empty(2) for _ in range(6)] + [np.zeros(2, np.int64), np.zeros(2, bool)]
    kernels._reduce_groups(
        groups.starts,
        groups.ends,
        close,
        close,
        close,
        close,
        volume,
        close,
        np.arange(8),
        np.ones(0, bool),
        False,
        *outs,
    )
    sums = kernels.reduce_bars(
        groups, close, close, close, close, volume, close, np.arange(8), None
    )
    assert (
        [o.tolist() for o in outs[:6]]
        == [
            sums.open.tolist(),
            sums.high.tolist(),
            sums.low.tolist(),
            sums.close.tolist(),
            sums.volume.tolist(),
            sums.price_volume.tolist(),
        ]
        == [[1.0, 2.0], [2.0, 3.0], [1.0, 2.0], [2.0, 3.0], [3.0, 5.0], [5.0, 13.0]]
    )


# -- symbol runs and grouping -------------------------------------------------------------


@pytest.mark.parametrize(
    "column",
    [
        pa.array(["A", "A", "B", "B", "B", "A", "C"]),
        pa.array(["A", "A", "B", "B", "B", "A", "C"], pa.large_string()),
        pa.chunked_array([["A", "A"], ["B", "B", "B", "A"], ["C"]]),
        pa.array(["A", "A", "B", "B", "B", "A", "C"]).dictionary_encode(),
    ],
)
def test_runs_of_equal_symbols_in_any_layout(column: pa.Array) -> None:
    assert [x.tolist() if hasattr(x, "tolist") else x for x in string_runs(column)] == [
        [0, 2, 5, 6],
        ["A", "B", "A", "C"],
    ]


def test_runs_merge_across_chunks_and_skip_empty_chunks() -> None:
    column = pa.chunked_array([["A", "A"], [], ["A", "B"], ["B"]])
    starts, values = string_runs(column)
    assert (starts.tolist(), values) == ([0, 3], ["A", "B"])
    assert string_runs(pa.chunked_array([], pa.string()))[1] == []


def test_runs_of_empty_strings_and_of_many_short_runs() -> None:
    assert string_runs(pa.array(["", "", "x"]))[0].tolist() == [0, 2]
    alternating = pa.array(["a", "b"] * 2500)  # more runs than bisection is worth
    assert len(string_runs(alternating)[1]) == 5000


def test_sorted_bars_group_by_symbol_and_timeframe() -> None:
    table = pa.concat_tables(
        [
            bars_for("B", "1m", "2024-03-04", "2024-03-05").slice(0, 2),
            bars_for("A", "5m", "2024-03-04", "2024-03-05").slice(0, 2),
            bars_for("A", "1m", "2024-03-04", "2024-03-05").slice(0, 2),
        ]
    )
    bars = SortedBars.of(table, by_timeframe=True)
    assert list(zip(bars.symbols, bars.timeframes, strict=True)) == [
        ("B", "1m"),
        ("A", "5m"),
        ("A", "1m"),
    ]
    assert bars.order is None
    shuffled = SortedBars.of(table.take(pa.array([5, 0, 4, 1, 3, 2])), by_timeframe=True)
    assert shuffled.symbols == ["A", "A", "B"]
    assert shuffled.input_rows(np.arange(6)).tolist() == [2, 0, 5, 4, 1, 3]


# -- calendars ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instrument", "name"),
    [
        (Instrument(symbol="AAPL", exchange="XNAS"), "XNAS"),
        (Instrument(symbol="AAPL", exchange="nasdaq"), "NASDAQ"),
        (Instrument(symbol="SPY", exchange="NYSEARCA"), "ARCX"),
        (Instrument(symbol="BTCUSDT", asset_class="crypto", exchange="BINANCE"), "24/7"),
        (Instrument(symbol="EURUSD", asset_class="fx"), "24/5"),
        (Instrument(symbol="VOD", timezone="Europe/London"), "XLON"),
        (Instrument(symbol="XYZ", timezone="America/Sao_Paulo"), "24/5"),
    ],
)
def test_the_calendar_of_an_instrument(instrument: Instrument, name: str) -> None:
    assert calendar_name(instrument) == name


def test_local_days_are_23_or_25_hours_across_dst() -> None:
    ny = Instrument(symbol="BTCUSD", asset_class="crypto", timezone="America/New_York")
    days = sessions_for(ny, us("2024-11-02T12:00"), us("2024-11-04T12:00"))
    hours = ((days.closes - days.opens) // 3_600_000_000).tolist()
    assert hours == [24, 25, 24]
    assert days.always_open


def test_lunch_breaks_split_a_session_into_two_intervals() -> None:
    hk = sessions_for(
        Instrument(symbol="0700.HK", exchange="XHKG", timezone="Asia/Hong_Kong"),
        us("2024-03-04"),
        us("2024-03-05"),
    )
    starts, ends, index = hk.intervals()
    assert [(s, e) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)] == [
        (us("2024-03-04T01:30"), us("2024-03-04T04:00")),
        (us("2024-03-04T05:00"), us("2024-03-04T08:00")),
    ]
    assert index.tolist() == [0, 0]
    assert isinstance(hk, Sessions)


def test_a_calendar_that_cannot_cover_the_dates_says_so() -> None:
    hong_kong = Instrument(symbol="0700.HK", exchange="XHKG", timezone="Asia/Hong_Kong")
    with pytest.raises(ConfigError, match="exchange calendar XHKG cannot cover 1950-"):
        sessions_for(hong_kong, us("1955-01-01"), us("1955-01-02"))


@pytest.mark.parametrize(
    "rows",
    [[], [0], [1, 2, 3, 7, 8, 2999], list(range(0, 3000, 2))],
    ids=["none", "one", "few-runs", "many-runs"],
)
def test_take_rows_equals_an_arrow_take_whether_sliced_or_copied(rows: list[int]) -> None:
    table = bars_for("BTCUSDT", "1m", "2024-03-04", "2024-03-07").slice(0, 3000)
    wanted = np.asarray(rows, dtype=np.int64)
    assert take_rows(table, wanted).equals(table.take(pa.array(wanted, pa.int64())))
