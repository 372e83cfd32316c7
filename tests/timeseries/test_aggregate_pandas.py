"""Roll-ups equal pandas ``resample`` bit for bit: property tests on random bars and a
test on real daily market data (GOOG, shipped inside the ``backtesting`` package)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketlake.schema import BAR_SCHEMA, Instrument
from marketlake.store import Store
from marketlake.timeseries.aggregate import rollup

BASE_US = int(datetime(2024, 3, 8, tzinfo=UTC).timestamp()) * 1_000_000
PRICE = st.floats(min_value=1e-4, max_value=1e7, allow_nan=False)
VOLUME = st.one_of(st.floats(min_value=0, max_value=1e12), st.sampled_from([0.0, np.nan, 1e300]))
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def bar_tables(
    draw: st.DrawFn,
    timeframe: str = "1m",
    step_s: int = 60,
    span_steps: int = 5 * 1440,
    symbols: tuple[str, ...] = ("AAA", "BBB"),
) -> pa.Table:
    """Random bars: repeated and unaligned times, nulls, huge and tiny values, any order."""
    n = draw(st.integers(1, 80))
    offsets = draw(st.lists(st.integers(0, span_steps), min_size=n, max_size=n))
    jitter = draw(st.lists(st.sampled_from([0, 0, 0, 1, step_s - 1]), min_size=n, max_size=n))
    rows = {
        "symbol": draw(st.lists(st.sampled_from(symbols), min_size=n, max_size=n)),
        "timeframe": [timeframe] * n,
        "ts": [
            BASE_US + (o * step_s + j) * 1_000_000 for o, j in zip(offsets, jitter, strict=True)
        ],
        "open": draw(st.lists(PRICE, min_size=n, max_size=n)),
        "high": draw(st.lists(PRICE, min_size=n, max_size=n)),
        "low": draw(st.lists(PRICE, min_size=n, max_size=n)),
        "close": draw(st.lists(PRICE, min_size=n, max_size=n)),
        "volume": draw(st.lists(VOLUME, min_size=n, max_size=n)),
        "trades": draw(
            st.lists(st.one_of(st.none(), st.integers(0, 10**6)), min_size=n, max_size=n)
        ),
        "vwap": draw(st.lists(st.one_of(st.none(), PRICE), min_size=n, max_size=n)),
        "source": ["test"] * n,
    }
    return pa.table({**rows, "ts": pa.array(rows["ts"], pa.int64())}).cast(BAR_SCHEMA)


def pandas_rollup(
    table: pa.Table, rule: str, *, key: str = "ts", local_tz: str | None = None
) -> pd.DataFrame:
    """The reference: stable sort, pandas resample per symbol, empty buckets dropped."""
    df = table.to_pandas()
    df = df.sort_values(["symbol", "ts"], kind="mergesort").reset_index(drop=True)
    df["pv"] = df["vwap"].fillna(df["close"]) * df["volume"]
    df["no_trades"] = df["trades"].isna()
    if local_tz is not None:
        df[key] = df[key].dt.tz_convert(local_tz)
    out = (
        df.groupby("symbol")
        .resample(rule, on=key, origin="epoch", closed="left", label="left")
        .agg(
            {
                "open": "first",
                "high": "max",
                "low": "min",
                "close": "last",
                "volume": "sum",
                "pv": "sum",
                "trades": "sum",
                "no_trades": "max",
                "source": "size",
            }
        )
    )
    out = out[out["source"] > 0].reset_index()
    out["vwap"] = (out["pv"] / out["volume"]).where(out["volume"] != 0)
    out["trades"] = out["trades"].where(~out["no_trades"].astype(bool))
    return out


def assert_same(ours: pa.Table, ref: pd.DataFrame, labels: np.ndarray) -> None:
    """Every value equal (NaN equal to NaN), and bucket labels equal."""
    got = ours.to_pandas()
    assert list(got["symbol"]) == list(ref["symbol"])
    assert np.array_equal(
        got["ts"].dt.tz_localize(None).to_numpy().astype("datetime64[us]"), labels
    )
    for column in ("open", "high", "low", "close", "volume", "vwap", "trades"):
        mine = got[column].to_numpy(dtype=float, na_value=np.nan)
        theirs = ref[column].to_numpy(dtype=float, na_value=np.nan)
        assert np.array_equal(mine, theirs, equal_nan=True), column


def utc_labels(ref: pd.DataFrame) -> np.ndarray:
    return ref["ts"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[us]")


@PROPERTY
@given(table=bar_tables(), target=st.sampled_from(["2m", "5m", "7m", "15m", "1h", "4h", "12h"]))
def test_intraday_rollup_equals_pandas_resample(table: pa.Table, target: str) -> None:
    """Epoch-aligned intraday buckets: labels, edges, sums and empty buckets as pandas."""
    ref = pandas_rollup(table, target.replace("m", "min"))
    assert_same(rollup(table, target), ref, utc_labels(ref))


@PROPERTY
@given(table=bar_tables(timeframe="5m", step_s=300, span_steps=3 * 288))
def test_rollup_of_shuffled_rows_equals_rollup_of_sorted_rows(table: pa.Table) -> None:
    """Input order does not matter beyond the order of equal timestamps."""
    order = pa.compute.sort_indices(table, [("symbol", "ascending"), ("ts", "ascending")])
    assert rollup(table, "1h").equals(rollup(table.take(order), "1h"))


@PROPERTY
@given(
    table=bar_tables(symbols=("BTCUSD",), span_steps=60 * 24 * 4),
    start=st.sampled_from(["2024-03-08", "2024-10-31"]),
)
def test_daily_bars_of_a_24_7_instrument_follow_local_days_across_dst(
    table: pa.Table, start: str
) -> None:
    """A crypto instrument quoted in New York time gets New York days, 23 or 25 hours long."""
    shift = int((datetime.fromisoformat(start).replace(tzinfo=UTC).timestamp()) * 1e6) - BASE_US
    table = table.set_column(
        2,
        "ts",
        pa.array(table.column("ts").cast(pa.int64()).to_numpy() + shift).cast(
            BAR_SCHEMA.field("ts").type
        ),
    )
    instrument = Instrument(symbol="BTCUSD", asset_class="crypto", timezone="America/New_York")
    ours = rollup(table, "1d", instruments={"BTCUSD": instrument})
    ref = pandas_rollup(table, "1D", local_tz="America/New_York")
    dates = ref["ts"].dt.tz_localize(None).dt.normalize().to_numpy().astype("datetime64[us]")
    assert_same(ours, ref, dates)


@st.composite
def daily_tables(draw: st.DrawFn) -> pa.Table:
    table = draw(bar_tables(timeframe="1d", step_s=86400, span_steps=800, symbols=("GOOG",)))
    days = table.column("ts").cast(pa.int64()).to_numpy() // 86_400_000_000 * 86_400_000_000
    return table.set_column(2, "ts", pa.array(days).cast(BAR_SCHEMA.field("ts").type))


@PROPERTY
@given(table=daily_tables(), target=st.sampled_from(["1w", "1mo", "2d", "5d"]))
def test_weekly_and_monthly_bars_from_daily_equal_pandas(table: pa.Table, target: str) -> None:
    """Weeks start on Monday, months on the 1st, N-day blocks at the epoch."""
    rule = {"1w": "W-MON", "1mo": "MS", "2d": "2D", "5d": "5D"}[target]
    ref = pandas_rollup(table, rule)
    assert_same(rollup(table, target), ref, utc_labels(ref))


def goog_daily() -> pa.Table:
    """GOOG daily OHLCV 2004-2013 as canonical 1d bars."""
    from backtesting.test import GOOG

    df = GOOG.reset_index(names="ts")
    df["ts"] = df["ts"].dt.tz_localize("UTC")
    df = df.rename(columns=str.lower).assign(symbol="GOOG", timeframe="1d", source="backtesting")
    return pa.Table.from_pandas(df, preserve_index=False).select(
        ["symbol", "timeframe", "ts", "open", "high", "low", "close", "volume", "source"]
    )


def test_goog_daily_rolled_up_to_weeks_equals_pandas() -> None:
    from marketlake.schema import normalize_bars

    bars = normalize_bars(goog_daily())
    ref = pandas_rollup(bars, "W-MON")
    weeks = rollup(bars, "1w")
    assert weeks.num_rows == len(ref) == 446
    assert_same(weeks, ref, utc_labels(ref))
    first = weeks.slice(0, 1).to_pylist()[0]  # Thu 2004-08-19 and Fri 2004-08-20
    assert (
        first["ts"],
        first["open"],
        first["high"],
        first["low"],
        first["close"],
        first["volume"],
    ) == (datetime(2004, 8, 16, tzinfo=UTC), 100.0, 109.08, 95.96, 108.31, 33780500.0)


def test_goog_daily_rolled_up_to_months_equals_pandas() -> None:
    from marketlake.schema import normalize_bars

    bars = normalize_bars(goog_daily())
    ref = pandas_rollup(bars, "MS")
    months = rollup(bars, "1mo")
    assert months.num_rows == len(ref) == 104
    assert_same(months, ref, utc_labels(ref))


@pytest.mark.parametrize(("target", "rule"), [("1w", "W-MON"), ("1mo", "MS")])
def test_a_real_daily_file_imported_with_tz_rolls_up_in_the_store_like_pandas(
    duck: Store, target: str, rule: str
) -> None:
    """The daily index file (tests/data/csv) imported with --tz, rolled up in the store to
    weeks and months, equals pandas on the file itself: weeks labelled with their Monday,
    months with their 1st (a date shifted by --tz would put Monday's bar in the week
    before)."""
    import pandas as pd

    from marketlake.ingest.csv_import import import_csv
    from marketlake.ingest.rollups import aggregate_store

    path = Path(__file__).resolve().parents[1] / "data" / "csv" / "index_daily.csv"
    import_csv(duck, path, "SPX", timeframe="1d", tz="America/New_York")
    aggregate_store(duck, ["SPX"], "1d", [target])
    got = duck.read_bars("SPX", target).table.to_pandas()
    frame = pd.read_csv(path, parse_dates=["Date"]).set_index("Date")
    if rule == "W-MON":
        grouped = frame.resample("W-MON", label="left", closed="left")
    else:
        grouped = frame.resample("MS")
    ref = grouped.agg(
        {"Open": "first", "High": "max", "Low": "min", "Close": "last", "Volume": "sum"}
    ).dropna()
    labels = [ts.date() for ts in got["ts"]]
    assert labels == [ts.date() for ts in ref.index]
    if target == "1w":
        assert {d.weekday() for d in labels} == {0}
    else:
        assert {d.day for d in labels} == {1}
    for ours, theirs in (("open", "Open"), ("high", "High"), ("low", "Low"), ("close", "Close")):
        assert got[ours].tolist() == ref[theirs].tolist()
    assert got["volume"].tolist() == ref["Volume"].astype(float).tolist()
