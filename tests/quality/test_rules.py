"""Quality rules: each rule catches what it should, says so precisely, and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from marketlake.quality.policy import QualityPolicy
from marketlake.quality.rules import apply_policy, validate_bars
from marketlake.schema import BAR_SCHEMA, Instrument
from tests.conftest import bars_for

MINUTE = timedelta(minutes=1)
CRYPTO = Instrument(symbol="BTCUSDT", asset_class="crypto", timezone="UTC")
STOCK = Instrument(symbol="AAPL", asset_class="stock", exchange="XNYS")
KNOWN = {"BTCUSDT": CRYPTO, "AAPL": STOCK}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def bars(
    times: list[datetime],
    closes: list[float] | None = None,
    *,
    symbol: str = "BTCUSDT",
    timeframe: str = "1m",
    volume: float = 5.0,
) -> pa.Table:
    """Consistent bars at ``times``: open = previous close, high/low 1 % around."""
    closes = closes or [100.0 + 0.01 * i for i in range(len(times))]
    opens = [closes[0], *closes[:-1]]
    return pa.table(
        {
            "symbol": [symbol] * len(times),
            "timeframe": [timeframe] * len(times),
            "ts": times,
            "open": opens,
            "high": [max(o, c) * 1.01 for o, c in zip(opens, closes, strict=True)],
            "low": [min(o, c) * 0.99 for o, c in zip(opens, closes, strict=True)],
            "close": closes,
            "volume": [volume] * len(times),
            "trades": [3] * len(times),
            "vwap": closes,
            "source": ["test"] * len(times),
        }
    ).cast(BAR_SCHEMA)


def minutes(start: str, n: int) -> list[datetime]:
    return [utc(start) + i * MINUTE for i in range(n)]


def edit(table: pa.Table, row: int, **values: float) -> pa.Table:
    rows = table.to_pylist()
    rows[row].update(values)
    return pa.Table.from_pylist(rows, schema=BAR_SCHEMA)


def check(table: pa.Table, policy: QualityPolicy | None = None, **kw: object) -> tuple:
    return apply_policy(table, policy, instruments=KNOWN, **kw)  # type: ignore[arg-type]


def test_clean_synthetic_bars_have_no_findings_and_a_full_score() -> None:
    table = bars_for(["AAPL", "BTCUSDT"], "1m", "2024-03-04", "2024-03-16")
    kept, report = check(table)
    assert report.counts == {}
    assert kept.num_rows == table.num_rows
    scores = {(s.symbol, s.expected, s.present, s.clean, s.score) for s in report.series}
    assert scores == {("AAPL", 3900, 3900, 3900, 1.0), ("BTCUSDT", 17280, 17280, 17280, 1.0)}


def test_high_below_low_is_an_ohlc_error_and_the_bar_is_rejected() -> None:
    table = edit(bars(minutes("2024-03-04T10:00", 5)), 2, high=9.5, low=10.1, open=10.0, close=10.0)
    kept, report = check(table)
    assert kept.num_rows == 4
    assert report.rejected_rows.tolist() == [2]
    (finding,) = report.findings
    assert (finding.rule, finding.severity, finding.row, finding.ts) == (
        "ohlc",
        "error",
        2,
        utc("2024-03-04T10:02"),
    )
    assert finding.message == "high 9.5 is below low 10.1"
    assert finding.values == {"open": 10.0, "high": 9.5, "low": 10.1, "close": 10.0}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"open": 9.0}, "low 9.9 is above min(open, close) 9.0"),
        ({"close": 10.6}, "high 10.5 is below max(open, close) 10.6"),
    ],
)
def test_open_and_close_must_lie_between_low_and_high(values: dict, message: str) -> None:
    table = edit(
        bars(minutes("2024-03-04T10:00", 3)),
        1,
        **{"open": 10.0, "high": 10.5, "low": 9.9, "close": 10.0, **values},
    )
    _, report = check(table)
    assert [(f.rule, f.message) for f in report.findings] == [("ohlc", message)]


def test_empty_nan_zero_or_infinite_prices_are_price_errors_not_ohlc_errors() -> None:
    table = bars(minutes("2024-03-04T10:00", 5))
    rows = table.to_pylist()
    rows[1]["close"], rows[2]["open"], rows[3]["high"] = None, 0.0, float("inf")
    kept, report = check(pa.Table.from_pylist(rows))  # a null close becomes NaN, then caught
    assert report.counts == {"price": 3}
    assert kept.num_rows == 2
    assert report.findings[0].message == (
        "close nan is not a positive finite price; fix the source or drop the bar"
    )
    assert report.findings[1].message.startswith("open 0.0 is not a positive finite price")


def test_negative_or_nan_volume_is_a_volume_error() -> None:
    table = edit(edit(bars(minutes("2024-03-04T10:00", 4)), 1, volume=-3.0), 2, volume=float("nan"))
    kept, report = check(table)
    assert [(f.rule, f.row) for f in report.findings] == [("volume", 1), ("volume", 2)]
    assert report.findings[0].message == "volume -3.0 is not a finite number >= 0"
    assert kept.num_rows == 2


def test_two_bars_at_one_time_with_different_values_are_both_rejected() -> None:
    table = bars(minutes("2024-03-04T10:00", 4))
    twin = edit(table.slice(1, 1), 0, close=200.0, high=210.0)
    same = table.slice(2, 1)  # an exact repeat is harmless: the store keeps one
    kept, report = check(pa.concat_tables([table, twin, same]))
    assert report.counts == {"duplicate": 2}
    assert sorted(f.row for f in report.findings) == [1, 4]
    assert report.findings[0].message == (
        "2 bars at 2024-03-04T10:01:00Z with different values; keep one (e.g. re-fetch the range)"
    )
    assert kept.num_rows == 4  # rows 0, 2, 3 and the exact repeat of row 2


@pytest.mark.parametrize(
    ("timeframe", "good", "bad"),
    [
        ("1m", "2024-03-04T10:00", "2024-03-04T10:01:30"),
        ("1h", "2024-03-04T10:00", "2024-03-04T10:30"),
        ("1d", "2024-03-04", "2024-03-05T14:30"),
        ("1w", "2024-03-04", "2024-03-13"),
        ("1mo", "2024-03-01", "2024-04-02"),
    ],
)
def test_a_time_that_is_no_bar_start_is_misaligned(timeframe: str, good: str, bad: str) -> None:
    table = bars([utc(good), utc(bad)], timeframe=timeframe)
    kept, report = check(table)
    assert report.counts == {"misaligned": 1}
    assert kept.num_rows == 1
    assert report.findings[0].ts == utc(bad)
    assert f"is not the start of a {timeframe} bar" in report.findings[0].message


def test_stock_bars_outside_nyse_sessions_are_flagged_crypto_bars_never() -> None:
    times = [
        utc("2024-03-04T14:29"),  # pre-market (09:29 New York)
        utc("2024-03-04T14:30"),
        utc("2024-03-04T20:59"),  # first and last minute
        utc("2024-03-04T21:00"),  # after the close
        utc("2024-03-09T15:00"),  # a Saturday
        utc("2024-07-04T15:00"),  # Independence Day
        utc("2024-11-29T17:59"),
        utc("2024-11-29T18:00"),
    ]  # half day: close 13:00 ET
    kept, report = check(bars(times, symbol="AAPL"))
    outside = [f.ts for f in report.findings if f.rule == "outside_session"]
    assert outside == [times[0], times[3], times[4], times[5], times[7]]
    assert report.findings[0].message == (
        "bar at 2024-03-04T14:29:00Z is outside the XNYS trading sessions"
    )
    assert kept.num_rows == len(times)  # flagged, not rejected
    _, crypto = check(bars(times))
    assert "outside_session" not in crypto.counts


def test_hourly_bars_overlapping_the_open_are_inside_the_session() -> None:
    times = [utc("2024-03-04T14:00"), utc("2024-03-04T20:00"), utc("2024-03-04T21:00")]
    _, report = check(bars(times, symbol="AAPL", timeframe="1h"))
    assert [f.ts for f in report.findings if f.rule == "outside_session"] == [times[2]]


def test_missing_minutes_are_reported_as_ranges_merged_across_the_night() -> None:
    table = bars_for("AAPL", "1m", "2024-03-04", "2024-03-09")
    ts = table.column("ts").to_pylist()
    drop = {t for t in ts if utc("2024-03-04T15:00") <= t < utc("2024-03-04T16:00")}
    drop |= {t for t in ts if utc("2024-03-06") <= t < utc("2024-03-07T14:40")}
    keep = pa.array([t not in drop for t in ts])
    _kept, report = check(table.filter(keep))
    gaps = [(f.ts, f.end_ts, f.values["missing"]) for f in report.findings if f.rule == "gap"]
    assert gaps == [
        (utc("2024-03-04T15:00"), utc("2024-03-04T16:00"), 60),
        (utc("2024-03-06T14:30"), utc("2024-03-07T14:40"), 400),
    ]
    (series,) = report.series
    assert (series.expected, series.present, series.missing) == (1950, 1490, 460)
    assert series.score == round(1490 / 1950, 6)


def test_daily_gaps_count_trading_days_only() -> None:
    days = [
        utc(d)
        for d in (
            "2024-03-25",
            "2024-03-26",
            "2024-03-28",  # no 27th
            "2024-04-01",
        )
    ]  # Good Friday 29th is a holiday
    _, report = check(bars(days, symbol="AAPL", timeframe="1d"))
    assert [(f.ts, f.end_ts, f.values) for f in report.findings] == [
        (utc("2024-03-27"), utc("2024-03-28"), {"missing": 1})
    ]
    assert (report.series[0].expected, report.series[0].present) == (5, 4)


def test_a_close_frozen_while_volume_trades_is_stale() -> None:
    closes = [100.0 + i for i in range(5)] + [105.0] * 12 + [106.0, 107.0]
    table = bars(minutes("2024-03-04T10:00", len(closes)), closes)
    _, report = check(table)
    (finding,) = [f for f in report.findings if f.rule == "stale"]
    assert (finding.ts, finding.end_ts) == (utc("2024-03-04T10:05"), utc("2024-03-04T10:17"))
    assert finding.values == {"close": 105.0, "bars": 12}
    _, quiet = check(bars(minutes("2024-03-04T10:00", len(closes)), closes, volume=0.0))
    assert "stale" not in quiet.counts


def test_a_spike_is_an_outlier_in_and_out() -> None:
    rng = np.random.default_rng(3)
    closes = list(100 * np.exp(np.cumsum(rng.normal(0, 0.001, 3000))))
    closes[1500] *= 1.05
    table = bars(minutes("2024-03-04T00:00", len(closes)), closes)
    kept, report = check(table)
    assert report.counts == {"outlier": 2}
    assert kept.num_rows == 3000
    assert [f.row for f in report.findings] == [1500, 1501]
    assert report.findings[0].message == (
        f"return {closes[1500] / closes[1499] - 1:+.2%} is beyond 10 robust z-scores of the "
        "returns around it"
    )


def test_a_halving_without_a_recorded_split_is_split_like() -> None:
    days = [utc("2024-06-03") + timedelta(days=i) for i in range(12)]
    days = [d for d in days if d.weekday() < 5]
    closes = [200.0 + i for i in range(5)] + [100.0 + i for i in range(len(days) - 5)]
    table = bars(days, closes, symbol="AAPL", timeframe="1d")
    table = edit(table, 5, open=100.0, low=99.0)
    _, report = check(table)
    assert report.counts == {"split": 1}  # not also an outlier
    finding = report.findings[0]
    assert finding.ts == days[5]
    assert finding.values["ratio"] == 2.04
    recorded = pa.table(
        {"symbol": ["AAPL"], "ts": [days[5] + timedelta(days=1)], "kind": ["split"], "value": [2.0]}
    )
    _, explained = check(table, corporate_actions=recorded)
    assert explained.counts == {}


def test_off_disables_a_rule_and_flag_keeps_the_bar() -> None:
    table = edit(bars(minutes("2024-03-04T10:00", 3)), 1, high=1.0, low=2.0)
    kept, report = check(table, QualityPolicy().with_actions(ohlc="flag"))
    assert kept.num_rows == 3
    assert report.counts == {"ohlc": 1}
    assert report.rejected == 0
    kept, report = check(table, QualityPolicy().with_actions(ohlc="off"))
    assert kept.num_rows == 3
    assert report.counts == {}


def test_shuffled_input_reports_and_rejects_the_input_rows() -> None:
    table = edit(bars(minutes("2024-03-04T10:00", 6)), 4, high=1.0, low=2.0)
    shuffled = table.take(pa.array([5, 4, 3, 2, 1, 0]))
    kept, report = check(shuffled)
    assert [f.row for f in report.findings] == [1]
    assert sorted(kept.column("ts").to_pylist()) == [
        t for i, t in enumerate(table.column("ts").to_pylist()) if i != 4
    ]


@pytest.mark.parametrize(
    "bad",
    [[0], [0, 5, 2999], list(range(1, 3000, 2)), list(range(3000))],
    ids=["first", "few", "many", "all"],
)
def test_rejected_rows_are_dropped_and_the_rest_kept_in_order(bad: list[int]) -> None:
    table = bars(minutes("2024-03-04T10:00", 3000))
    volume = np.full(3000, 5.0)
    volume[bad] = -1.0
    table = table.set_column(7, "volume", pa.array(volume)).cast(BAR_SCHEMA)
    kept, report = check(table)
    assert report.rejected == len(bad)
    assert kept.equals(table.filter(pa.array(volume >= 0)))


def test_findings_are_capped_per_rule_but_counted_exactly() -> None:
    table = bars(minutes("2024-03-04T10:00", 30))
    table = table.set_column(7, "volume", pa.array([-1.0] * 30))
    _, report = check(table, QualityPolicy(max_findings=5))
    assert report.counts == {"volume": 30}
    assert len(report.findings) == 5
    assert report.truncated
    assert report.rejected == 30


def test_raise_for_rejected_names_the_lines() -> None:
    table = edit(bars(minutes("2024-03-04T10:00", 3)), 1, high=1.0, low=2.0)
    _, report = check(table)
    from marketlake.errors import DataError

    with pytest.raises(DataError, match=r"^1 bad row\(s\): line 3: high 1.0 is below low 2.0$"):
        report.raise_for_rejected(first_line=2)


def test_an_empty_table_is_fine() -> None:
    report, reject = validate_bars(BAR_SCHEMA.empty_table())
    assert report.counts == {}
    assert len(reject) == 0


def test_a_vwap_outside_low_high_is_an_error_and_the_bar_is_rejected() -> None:
    """A Binance quote volume read as the vwap (6.2 M on a price of 61 k) is caught."""
    table = bars(minutes("2024-03-04T10:00", 4), [61000.0, 61010.0, 61020.0, 61030.0])
    table = edit(table, 1, vwap=6_200_000.0)
    table = edit(table, 2, vwap=float("nan"))  # no vwap given: nothing to check
    kept, report = check(table)
    assert report.counts == {"vwap": 1}
    [finding] = report.findings
    assert (finding.rule, finding.severity, finding.ts) == (
        "vwap",
        "error",
        utc("2024-03-04T10:01"),
    )
    assert finding.message.startswith("vwap 6200000.0 is outside [low 60390.0, high 61620.1")
    assert kept.num_rows == 3
    assert 6_200_000.0 not in kept.column("vwap").to_pylist()


def test_a_vwap_on_the_high_or_the_low_is_inside() -> None:
    table = bars(minutes("2024-03-04T10:00", 2), [100.0, 101.0])
    rows = table.to_pylist()
    table = edit(edit(table, 0, vwap=rows[0]["high"]), 1, vwap=rows[1]["low"])
    _, report = check(table)
    assert "vwap" not in report.counts


def test_a_daily_bar_on_a_day_without_session_is_an_error_for_a_stock_not_for_crypto() -> None:
    days = [utc("2024-03-08"), utc("2024-03-09"), utc("2024-03-11"), utc("2024-07-04")]
    kept, report = check(bars(days, symbol="AAPL", timeframe="1d"))
    closed = [f for f in report.findings if f.rule == "closed_day"]
    assert [f.ts for f in closed] == [days[1], days[3]]  # a Saturday, Independence Day
    assert {f.severity for f in closed} == {"error"}
    assert closed[0].message == (
        "daily bar on 2024-03-09 (Saturday), a day with no XNYS session; "
        "are the dates shifted (check --tz) or the exchange wrong?"
    )
    assert kept.column("ts").to_pylist() == [days[0], days[2]]  # rejected by default
    assert "outside_session" not in report.counts
    _, crypto = check(bars(days, timeframe="1d"))
    assert "closed_day" not in crypto.counts
    flag = QualityPolicy().with_actions(closed_day="flag")
    kept, _ = check(bars(days, symbol="AAPL", timeframe="1d"), flag)
    assert kept.num_rows == 4
