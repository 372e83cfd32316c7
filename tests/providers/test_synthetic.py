"""The synthetic provider: deterministic, consistent, realistic sessions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from marketlake.config import Settings
from marketlake.errors import TimeframeError
from marketlake.providers.synthetic import SyntheticProvider, generate_bars
from marketlake.schema import BAR_SCHEMA
from marketlake.timeseries.aggregate import rollup

NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_the_same_request_gives_the_same_bars() -> None:
    first = generate_bars(["AAPL", "BTCUSDT"], "1m", utc(2024, 3, 4), utc(2024, 3, 6))
    again = generate_bars(["BTCUSDT", "AAPL"], "1m", utc(2024, 3, 4), utc(2024, 3, 6))
    assert first.schema == BAR_SCHEMA
    assert first.equals(again)
    other_seed = generate_bars("AAPL", "1m", utc(2024, 3, 4), utc(2024, 3, 6), seed=8)
    assert not other_seed.column("close").equals(
        first.filter(pc.equal(first["symbol"], "AAPL")).column("close")
    )


def test_overlapping_requests_agree_on_their_overlap() -> None:
    for symbol in ("MSFT", "ETHUSDT"):
        a = generate_bars(symbol, "1m", utc(2024, 3, 4), utc(2024, 3, 7))
        b = generate_bars(symbol, "1m", utc(2024, 3, 5, 15), utc(2024, 3, 9))
        lo, hi = utc(2024, 3, 5, 15), utc(2024, 3, 7)
        pick = [
            t.filter(
                pc.and_(
                    pc.greater_equal(t["ts"], pa.scalar(lo, t["ts"].type)),
                    pc.less(t["ts"], pa.scalar(hi, t["ts"].type)),
                )
            )
            for t in (a, b)
        ]
        assert pick[0].num_rows > 0
        assert pick[0].equals(pick[1])


@pytest.mark.parametrize("symbol", ["AAPL", "BTCUSDT"])
def test_ohlc_is_always_consistent(symbol: str) -> None:
    bars = generate_bars(symbol, "1m", utc(2024, 1, 1), utc(2024, 2, 1))
    o, h, lo, c, v = (bars.column(n).to_numpy() for n in ("open", "high", "low", "close", "volume"))
    assert np.all(h >= np.maximum(o, c))
    assert np.all(lo <= np.minimum(o, c))
    assert np.all(lo > 0)
    assert np.all(v >= 0)
    vwap = bars.column("vwap").to_numpy()
    assert np.all((vwap >= lo) & (vwap <= h))
    assert pc.min(bars.column("trades")).as_py() >= 1


def _local(bars: pa.Table) -> list[datetime]:
    return [ts.astimezone(NEW_YORK) for ts in bars.column("ts").to_pylist()]


def test_stocks_trade_only_in_nyse_sessions() -> None:
    bars = generate_bars("AAPL", "1m", utc(2024, 6, 28), utc(2024, 7, 9))
    local = _local(bars)
    assert all(t.weekday() < 5 for t in local)
    minutes = [t.hour * 60 + t.minute for t in local]
    assert min(minutes) == 9 * 60 + 30
    assert max(minutes) == 15 * 60 + 59
    per_day: dict[str, int] = {}
    for t in local:
        per_day[t.date().isoformat()] = per_day.get(t.date().isoformat(), 0) + 1
    assert per_day == {
        "2024-06-28": 390,
        "2024-07-01": 390,
        "2024-07-02": 390,
        "2024-07-03": 210,  # half day: closes at 13:00
        "2024-07-05": 390,
        "2024-07-08": 390,
    }  # 07-04 is a holiday


def test_a_stock_weekend_has_no_bars() -> None:
    empty = generate_bars("AAPL", "1m", utc(2024, 3, 9), utc(2024, 3, 11))
    assert empty.num_rows == 0
    assert empty.schema == BAR_SCHEMA


def test_crypto_trades_every_minute_of_every_day() -> None:
    bars = generate_bars("BTCUSDT", "1m", utc(2024, 3, 8), utc(2024, 3, 11))  # Fri-Sun
    ts = bars.column("ts").cast(pa.int64()).to_numpy()
    assert len(ts) == 3 * 1440
    assert np.all(np.diff(ts) == 60_000_000)


def test_stock_volume_is_u_shaped_through_the_day() -> None:
    bars = generate_bars("SPY", "1m", utc(2024, 1, 1), utc(2024, 4, 1))
    minutes = np.array([t.hour * 60 + t.minute - 570 for t in _local(bars)])
    volume = bars.column("volume").to_numpy()
    edges = volume[(minutes < 30) | (minutes >= 360)].mean()
    middle = volume[(minutes >= 165) & (minutes < 225)].mean()
    assert edges > 1.5 * middle


def test_returns_cluster_in_volatility() -> None:
    bars = generate_bars("BTCUSDT", "1d", utc(2020, 1, 1), utc(2024, 1, 1))
    close = bars.column("close").to_numpy()
    returns = np.abs(np.diff(np.log(close)))
    lag1 = np.corrcoef(returns[:-1], returns[1:])[0, 1]
    assert lag1 > 0.05  # big moves follow big moves


def test_coarser_timeframes_are_roll_ups_of_the_minutes() -> None:
    minutes = generate_bars("MSFT", "1m", utc(2024, 3, 4), utc(2024, 3, 6))
    assert generate_bars("MSFT", "5m", utc(2024, 3, 4), utc(2024, 3, 6)).equals(
        rollup(minutes, "5m")
    )
    daily = generate_bars("MSFT", "1d", utc(2024, 3, 4), utc(2024, 3, 6))
    assert daily.column("ts").to_pylist() == [utc(2024, 3, 4), utc(2024, 3, 5)]


def test_the_provider_yields_the_range_in_chunks() -> None:
    provider = SyntheticProvider(Settings())

    async def collect() -> list[pa.Table]:
        return [
            t async for t in provider.fetch_bars("ETHUSDT", "1m", utc(2024, 1, 1), utc(2024, 3, 1))
        ]

    chunks = asyncio.run(collect())
    assert [c.num_rows for c in chunks] == [30 * 1440, 30 * 1440]
    assert pa.concat_tables(chunks).equals(
        generate_bars("ETHUSDT", "1m", utc(2024, 1, 1), utc(2024, 3, 1))
    )


def test_the_provider_refuses_a_bad_timeframe() -> None:
    with pytest.raises(TimeframeError):
        SyntheticProvider(Settings()).check_timeframe("1y")


@pytest.mark.parametrize("timeframe", ["1m", "1h", "1d"])
def test_stock_volumes_are_whole_shares_crypto_keeps_fractions(timeframe: str) -> None:
    stock = generate_bars("AAPL", timeframe, utc(2024, 3, 4), utc(2024, 3, 9))
    volume = stock.column("volume").to_numpy()
    assert len(volume) > 0
    assert np.all(volume == np.round(volume))
    assert np.all(volume >= 0)
    crypto = generate_bars("BTCUSDT", timeframe, utc(2024, 3, 4), utc(2024, 3, 9))
    fractions = crypto.column("volume").to_numpy() % 1
    assert np.any(fractions != 0)
