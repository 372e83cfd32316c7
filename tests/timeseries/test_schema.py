"""Canonical schema: timeframes, time parsing, instruments and table normalisation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from marketlake.errors import InputError, SchemaError, TimeframeError
from marketlake.schema import (
    BAR_SCHEMA,
    STANDARD_TIMEFRAMES,
    TRADE_SCHEMA,
    Instrument,
    Timeframe,
    constant_column,
    default_instrument,
    from_epoch_us,
    normalize_bars,
    normalize_symbol,
    normalize_trades,
    parse_time,
    parse_timeframe,
    to_epoch_us,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# -- timeframes ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", [*STANDARD_TIMEFRAMES, "2m", "90m", "2h", "12h", "3d", " 5m "])
def test_valid_timeframes_parse_and_print_back(text: str) -> None:
    assert str(Timeframe.parse(text)) == text.strip()


@pytest.mark.parametrize(
    "text", ["", "m", "0m", "5", "5s", "1y", "2w", "3mo", "1M", "05m", "1.5h", "-1m"]
)
def test_unknown_timeframes_are_refused_with_the_valid_forms(text: str) -> None:
    with pytest.raises(TimeframeError) as info:
        Timeframe.parse(text)
    assert "N followed by m, h or d" in info.value.message
    assert "1w or 1mo" in info.value.message
    assert info.value.param == "timeframe"


def test_parse_timeframe_accepts_a_timeframe() -> None:
    tf = Timeframe(5, "m")
    assert parse_timeframe(tf) is tf


@pytest.mark.parametrize(
    ("text", "seconds", "intraday"),
    [
        ("1m", 60, True),
        ("15m", 900, True),
        ("4h", 14400, True),
        ("1d", 86400, False),
        ("2d", 172800, False),
        ("1w", 604800, False),
    ],
)
def test_timeframe_lengths(text: str, seconds: int, intraday: bool) -> None:
    tf = Timeframe.parse(text)
    assert (tf.seconds, tf.micros, tf.is_intraday, tf.is_calendar) == (
        seconds,
        seconds * 1_000_000,
        intraday,
        False,
    )


def test_a_month_has_no_fixed_length() -> None:
    tf = Timeframe.parse("1mo")
    assert tf.is_calendar
    with pytest.raises(TimeframeError, match="no fixed length"):
        _ = tf.seconds


@pytest.mark.parametrize(
    ("tf", "ts", "floor", "next_start"),
    [
        ("1m", utc(2024, 3, 4, 14, 33, 20), utc(2024, 3, 4, 14, 33), utc(2024, 3, 4, 14, 34)),
        ("5m", utc(2024, 3, 4, 14, 33, 20), utc(2024, 3, 4, 14, 30), utc(2024, 3, 4, 14, 35)),
        ("1h", utc(2024, 3, 4, 14, 59, 59), utc(2024, 3, 4, 14), utc(2024, 3, 4, 15)),
        ("4h", utc(2024, 3, 4, 14, 0), utc(2024, 3, 4, 12), utc(2024, 3, 4, 16)),
        ("1d", utc(2024, 3, 4, 23, 59), utc(2024, 3, 4), utc(2024, 3, 5)),
        ("1w", utc(2024, 3, 7, 12), utc(2024, 3, 4), utc(2024, 3, 11)),  # Thursday -> Monday
        ("1w", utc(2024, 3, 10, 23), utc(2024, 3, 4), utc(2024, 3, 11)),  # Sunday
        ("1w", utc(2024, 3, 11), utc(2024, 3, 11), utc(2024, 3, 18)),  # Monday itself
        ("1w", utc(1970, 1, 1), utc(1969, 12, 29), utc(1970, 1, 5)),
        ("1mo", utc(2024, 2, 29, 18), utc(2024, 2, 1), utc(2024, 3, 1)),
        ("1mo", utc(2023, 12, 31, 23), utc(2023, 12, 1), utc(2024, 1, 1)),
        ("5m", utc(1969, 12, 31, 23, 59), utc(1969, 12, 31, 23, 55), utc(1970, 1, 1)),
    ],
)
def test_floor_and_next_start(tf: str, ts: datetime, floor: datetime, next_start: datetime) -> None:
    frame = Timeframe.parse(tf)
    assert frame.floor(ts) == floor
    assert frame.next_start(ts) == next_start


def test_floor_works_on_arrays_and_agrees_with_pandas() -> None:
    import pandas as pd

    stamps = pd.date_range("2023-12-28", periods=500, freq="37min", tz="UTC")
    us = stamps.as_unit("us").asi8
    for tf, rule in (("5m", "5min"), ("1h", "1h"), ("1d", "1D")):
        expected = stamps.floor(rule).as_unit("us").asi8
        assert np.array_equal(Timeframe.parse(tf).floor_us(us), expected)
    weekly = Timeframe.parse("1w").floor_us(us)
    assert set(pd.to_datetime(weekly, unit="us").dayofweek) == {0}
    monthly = Timeframe.parse("1mo").floor_us(us)
    assert set(pd.to_datetime(monthly, unit="us").day) == {1}


def test_is_aligned_marks_bucket_starts() -> None:
    us = np.array([to_epoch_us(utc(2024, 3, 4, 14, 30)), to_epoch_us(utc(2024, 3, 4, 14, 31))])
    assert Timeframe.parse("5m").is_aligned(us).tolist() == [True, False]


def test_flooring_a_naive_datetime_is_refused() -> None:
    with pytest.raises(SchemaError, match="no timezone"):
        Timeframe.parse("1m").floor(datetime(2024, 3, 4))  # noqa: DTZ001


# -- times -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-04", utc(2024, 3, 4)),
        ("2024-03-04T14:30:00Z", utc(2024, 3, 4, 14, 30)),
        ("2024-03-04T15:30:00+01:00", utc(2024, 3, 4, 14, 30)),
        ("2024-03-04 14:30", utc(2024, 3, 4, 14, 30)),
        (" 2024-03-04T14:30:00.250Z ", utc(2024, 3, 4, 14, 30, 0, 250000)),
    ],
)
def test_parse_time_gives_aware_utc(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


def test_parse_time_converts_aware_datetimes_to_utc() -> None:
    eastern = datetime(2024, 3, 4, 9, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert parse_time(eastern) == utc(2024, 3, 4, 14, 30)


def test_parse_time_names_the_parameter_it_refuses() -> None:
    with pytest.raises(InputError, match="start 'soon' is not an ISO date") as info:
        parse_time("soon", param="start")
    assert info.value.param == "start"
    assert not isinstance(info.value, SchemaError)  # titled "Invalid input", not table schema


def test_epoch_microseconds_round_trip() -> None:
    ts = utc(2024, 3, 4, 14, 30, 0, 123456)
    assert to_epoch_us(ts) == 1709562600123456
    assert from_epoch_us(1709562600123456) == ts
    assert from_epoch_us(-60_000_000) == utc(1969, 12, 31, 23, 59)


# -- instruments --------------------------------------------------------------------------


def test_instrument_symbols_are_upper_case() -> None:
    assert Instrument(symbol=" aapl ").symbol == "AAPL"
    assert normalize_symbol("brk.b") == "BRK.B"


@pytest.mark.parametrize("symbol", ["", "AA PL", "X" * 33, "ÄPFEL", "A;B"])
def test_malformed_symbols_are_refused(symbol: str) -> None:
    with pytest.raises(InputError, match="symbol"):
        normalize_symbol(symbol)
    with pytest.raises(ValidationError):
        Instrument(symbol=symbol)


def test_an_unknown_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown IANA timezone"):
        Instrument(symbol="AAPL", timezone="Mars/Olympus")


@pytest.mark.parametrize(
    ("symbol", "asset_class", "tz"),
    [
        ("AAPL", "stock", "America/New_York"),
        ("BTCUSDT", "crypto", "UTC"),
        ("ETH-USD", "crypto", "UTC"),
        ("BTC/USDC", "crypto", "UTC"),
        ("^GSPC", "index", "America/New_York"),
    ],
)
def test_default_instruments_guess_the_asset_class(symbol: str, asset_class: str, tz: str) -> None:
    instrument = default_instrument(symbol.lower())
    assert (instrument.symbol, instrument.asset_class, instrument.timezone) == (
        symbol,
        asset_class,
        tz,
    )


# -- normalisation ----------------------------------------------------------------------


def _raw(**overrides: object) -> pa.Table:
    columns: dict[str, object] = {
        "ts": pa.array(
            [utc(2024, 3, 4, 14, 30), utc(2024, 3, 4, 14, 31)],
            pa.timestamp("ms", tz="America/New_York"),
        ),
        "open": [10, 11],
        "high": [12.0, 13.0],
        "low": [9.0, 10.0],
        "close": [11.0, 12.0],
        "volume": [100, 200],
    }
    columns.update(overrides)
    return pa.table(columns)


def test_normalize_bars_fills_constants_and_casts_to_the_canonical_schema() -> None:
    bars = normalize_bars(_raw(), symbol="AAPL", timeframe="1m", source="test")
    assert bars.schema == BAR_SCHEMA
    assert bars.to_pylist()[0] == {
        "symbol": "AAPL",
        "timeframe": "1m",
        "ts": utc(2024, 3, 4, 14, 30),
        "open": 10.0,
        "high": 12.0,
        "low": 9.0,
        "close": 11.0,
        "volume": 100.0,
        "trades": None,
        "vwap": None,
        "source": "test",
    }


def test_normalize_bars_upper_cases_a_symbol_column() -> None:
    bars = normalize_bars(_raw(symbol=["aapl", "msft"]), timeframe="1m", source="t")
    assert bars.column("symbol").to_pylist() == ["AAPL", "MSFT"]


def test_integer_times_are_epoch_microseconds() -> None:
    bars = normalize_bars(
        _raw(ts=[1709562600000000, 1709562660000000]), symbol="A", timeframe="1m", source="t"
    )
    assert bars.column("ts").to_pylist() == [utc(2024, 3, 4, 14, 30), utc(2024, 3, 4, 14, 31)]


@pytest.mark.parametrize(
    ("overrides", "kwargs", "message"),
    [
        (
            {"ts": pa.array([datetime(2024, 3, 4), datetime(2024, 3, 5)])},  # noqa: DTZ001
            {},
            "naive timestamps",
        ),
        ({"ts": ["2024-03-04", "2024-03-05"]}, {}, "expected a timestamp"),
        ({"close": ["a", "b"]}, {}, "column 'close' of type string cannot become double"),
        ({"close": [1.0, None]}, {}, "column 'close' has 1 empty values"),
        ({}, {"timeframe": None}, "bars need a 'timeframe' column"),
        ({"timeframe": ["1m", "7x"]}, {"timeframe": None}, "unknown timeframe '7x'"),
    ],
)
def test_normalize_bars_explains_what_does_not_fit(
    overrides: dict[str, object], kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"symbol": "AAPL", "timeframe": "1m", "source": "t", **kwargs}
    with pytest.raises(InputError, match=message):
        normalize_bars(_raw(**overrides), **args)  # type: ignore[arg-type]


def test_normalize_trades_gives_the_trade_schema() -> None:
    trades = normalize_trades(
        pa.table(
            {
                "ts": pa.array([utc(2024, 3, 4)], pa.timestamp("ns", tz="UTC")),
                "price": [1],
                "size": [2],
                "trade_id": ["7"],
            }
        ),
        symbol="BTCUSDT",
        source="binance",
    )
    assert trades.schema == TRADE_SCHEMA
    assert trades.to_pylist() == [
        {
            "symbol": "BTCUSDT",
            "ts": utc(2024, 3, 4),
            "price": 1.0,
            "size": 2.0,
            "side": None,
            "trade_id": "7",
            "source": "binance",
        }
    ]
    with pytest.raises(SchemaError, match="trade_id"):
        normalize_trades(
            pa.table({"ts": trades.column("ts"), "price": [1.0], "size": [1.0]}),
            symbol="X",
            source="y",
        )


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_constant_column_repeats_one_string(n: int) -> None:
    column = constant_column("BTCUSDT", n)
    column.validate(full=True)
    assert column.type == pa.string()
    assert column.to_pylist() == ["BTCUSDT"] * n
