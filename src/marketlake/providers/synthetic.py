"""Synthetic market data: deterministic, realistic, offline.

Every bar is a pure function of (seed, symbol, bar time): the noise comes from
a counter-based hash of the timestamp, not from a stream, so two overlapping
requests give identical bars on their overlap (and a re-ingest is all
duplicates). Prices follow a daily anchored random walk with volatility
clustering; inside each day a Brownian bridge of 1-minute log returns joins one
day's anchor to the next. Stocks trade the NYSE sessions (holidays and half
days from ``exchange-calendars``), crypto trades 24/7. Intraday volume is
U-shaped for stocks. Coarser timeframes are rolled up from the 1-minute grid,
so a 5-minute request equals the roll-up of the 1-minute one.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from marketlake.errors import InputError
from marketlake.providers.base import Provider
from marketlake.schema import (
    BAR_SCHEMA,
    US_PER_SECOND,
    Timeframe,
    default_instrument,
    normalize_symbol,
    to_epoch_us,
)
from marketlake.timeseries.times import epoch_us

MINUTE_US = 60 * US_PER_SECOND
DAY_US = 86400 * US_PER_SECOND
_ORIGIN = date(1990, 1, 1)
_U64 = np.uint64
Array = np.ndarray[Any, Any]


def _splitmix(x: Array) -> Array:
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    out: Array = x ^ (x >> _U64(31))
    return out


def _uniform(keys: Array, stream: int) -> Array:
    mixed = _splitmix(keys.astype(_U64) ^ _U64((stream * 0x632BE59BD9B4E019) & (2**64 - 1)))
    out: Array = ((mixed >> _U64(11)).astype(np.float64) + 0.5) / float(2**53)
    return out


def _normal(keys: Array, stream: int) -> Array:
    """Standard normal noise, a pure function of each key (Box-Muller)."""
    u1 = _uniform(keys, 2 * stream)
    u2 = _uniform(keys, 2 * stream + 1)
    out: Array = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return out


def _symbol_key(seed: int, symbol: str) -> int:
    return (zlib.crc32(f"{seed}:{symbol}".encode()) << 20) & (2**63 - 1)


@lru_cache(maxsize=8)
def _nyse(first_year: int, last_year: int) -> Any:
    import exchange_calendars as xcals
    from exchange_calendars.errors import CalendarError

    try:
        return xcals.get_calendar("XNYS", start=f"{first_year}-01-01", end=f"{last_year}-12-31")
    except (CalendarError, ValueError):
        raise InputError(
            f"synthetic stock bars follow the NYSE calendar from {first_year}; "
            f"give a range that ends after {first_year}-01-01 (this one ends in {last_year - 1})",
            param="end",
        ) from None


def session_minutes(is_crypto: bool, first: date, last: date) -> tuple[Array, Array]:
    """(day index since 1990-01-01, bar open in epoch µs) of every 1-minute bar in the days."""
    if is_crypto:
        days = np.arange((first - _ORIGIN).days, (last - _ORIGIN).days + 1, dtype=np.int64)
        origin_us = to_epoch_us(datetime(1990, 1, 1, tzinfo=UTC))
        day_idx = np.repeat(days, 1440)
        ts = (
            origin_us
            + day_idx * DAY_US
            + np.tile(np.arange(1440, dtype=np.int64), len(days)) * MINUTE_US
        )
        return day_idx, ts
    cal = _nyse(max(first.year, 1991), last.year + 1)
    schedule = cal.schedule.loc[str(first) : str(last)]
    if schedule.empty:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    opens = epoch_us(schedule["open"])
    closes = epoch_us(schedule["close"])
    dates = schedule.index.to_numpy().astype("datetime64[D]").astype(np.int64)
    days = dates - (np.datetime64(_ORIGIN, "D").astype(np.int64))
    lengths = ((closes - opens) // MINUTE_US).astype(np.int64)
    day_idx = np.repeat(days, lengths)
    starts = np.repeat(opens, lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return day_idx, starts + offsets * MINUTE_US


def _anchor_walk(log_p0: float, shocks: Array) -> Array:
    """Log price anchors: an Ornstein-Uhlenbeck walk around ``log_p0`` (half-life ~3 years)."""
    kappa = np.log(2) / 750
    out = np.empty(len(shocks))
    level = log_p0
    for i, shock in enumerate(shocks.tolist()):
        out[i] = level
        level += shock - kappa * (level - log_p0)
    return out


def _daily_cumsum(steps: Array, starts: Array, lengths: Array) -> Array:
    """Cumulative sums restarting every day, each day summed on its own so the result
    never depends on which other days were generated with it."""
    out = np.empty_like(steps)
    for length in np.unique(lengths).tolist():
        first = starts[lengths == length]
        rows = first[:, None] + np.arange(length)
        out[rows] = np.cumsum(steps[rows], axis=1)
    return out


def generate_minutes(symbol: str, start: datetime, end: datetime, seed: int = 7) -> pa.Table:
    """1-minute bars of ``symbol`` in ``[start, end)``."""
    symbol = normalize_symbol(symbol)
    is_crypto = default_instrument(symbol).asset_class == "crypto"
    start_us, end_us = to_epoch_us(start), to_epoch_us(end)
    first = (start - timedelta(days=1)).date()
    last = end.date()
    day_idx, ts = session_minutes(is_crypto, max(first, _ORIGIN), last)
    mask = (ts >= start_us) & (ts < end_us)
    if not mask.any():
        return BAR_SCHEMA.empty_table()
    # keep whole days for the bridge, cut to the range at the end
    keep_days = np.unique(day_idx[mask])
    whole = np.isin(day_idx, keep_days)
    day_idx, ts = day_idx[whole], ts[whole]
    key = _symbol_key(seed, symbol)
    annual_vol = 0.65 if is_crypto else 0.28
    p0 = 20000.0 if is_crypto else 40.0
    p0 *= float(np.exp(1.5 * _uniform(np.array([key], dtype=np.int64), 99)[0]))

    # daily anchors from the origin: a mean-reverting walk whose volatility clusters
    n_days = int(keep_days.max()) + 2
    day_keys = key + np.arange(n_days, dtype=np.int64)
    kernel = 20
    cluster = np.convolve(_normal(day_keys, 1), np.ones(kernel), mode="full")[:n_days]
    cluster /= np.sqrt(kernel)  # a causal moving sum of white noise: stationary, std 1
    day_vol = annual_vol / np.sqrt(365 if is_crypto else 252) * np.exp(0.35 * cluster)
    log_anchor = _anchor_walk(np.log(p0), day_vol * _normal(day_keys, 2))
    # inside each day: a Brownian bridge between consecutive anchors
    bars_per_day = np.bincount(day_idx - day_idx.min())
    bars_per_day = bars_per_day[bars_per_day > 0]
    starts = np.cumsum(bars_per_day) - bars_per_day
    pos = np.arange(len(ts)) - np.repeat(starts, bars_per_day)
    frac = (pos + 1) / np.repeat(bars_per_day, bars_per_day)
    u_shape = 1.0 + 1.6 * (2.0 * frac - 1.0) ** 2 if not is_crypto else np.ones(len(ts))
    u_mean = 1.0 + 1.6 / 3.0  # the mean of the U over a session
    per_bar = day_vol[day_idx] / np.sqrt(np.repeat(bars_per_day, bars_per_day))
    minute_vol = per_bar * np.sqrt(u_shape / u_mean)
    keys = key ^ (ts // MINUTE_US)
    steps = minute_vol * _normal(keys, 3)
    walk = _daily_cumsum(steps, starts, bars_per_day)
    total = np.repeat(walk[starts + bars_per_day - 1], bars_per_day)
    target = log_anchor[day_idx + 1] - log_anchor[day_idx]
    log_close = log_anchor[day_idx] + walk - frac * total + frac * target
    close = np.exp(log_close)
    prev = np.concatenate([[np.exp(log_anchor[day_idx[0]])], close[:-1]])
    first_of_day = pos == 0
    prev[first_of_day] = np.exp(log_anchor[day_idx[first_of_day]])
    open_ = prev
    wick = minute_vol * 0.6
    high = np.maximum(open_, close) * np.exp(np.abs(_normal(keys, 4)) * wick)
    low = np.minimum(open_, close) * np.exp(-np.abs(_normal(keys, 5)) * wick)
    base_volume = (2.0 if is_crypto else 25_000.0) * np.exp(_uniform(np.array([key]), 98)[0])
    volume = np.round(  # stocks trade whole shares, crypto keeps fractions
        base_volume * u_shape * np.exp(0.5 * _normal(keys, 6)) * np.exp(0.35 * cluster[day_idx]),
        4 if is_crypto else 0,
    )
    trades = np.maximum(1, np.round(volume / (0.05 if is_crypto else 120.0))).astype(np.int64)
    vwap = np.clip((high + low + 2 * close) / 4, low, high)
    cut = (ts >= start_us) & (ts < end_us)
    n = int(cut.sum())
    return pa.table(
        {
            "symbol": pa.array(np.full(n, symbol, dtype=object), pa.string()),
            "timeframe": pa.array(np.full(n, "1m", dtype=object), pa.string()),
            "ts": pa.array(ts[cut], pa.timestamp("us", tz="UTC")),
            "open": open_[cut].round(6),
            "high": high[cut].round(6),
            "low": low[cut].round(6),
            "close": close[cut].round(6),
            "volume": volume[cut],
            "trades": trades[cut],
            "vwap": vwap[cut].round(6),
            "source": pa.array(np.full(n, "synthetic", dtype=object), pa.string()),
        },
        schema=BAR_SCHEMA,
    )


def generate_bars(
    symbols: str | Sequence[str],
    timeframe: str | Timeframe,
    start: datetime,
    end: datetime,
    seed: int = 7,
) -> pa.Table:
    """Bars of every symbol at ``timeframe`` in ``[start, end)``, ordered by (symbol, ts)."""
    from marketlake.timeseries.aggregate import rollup

    tf = Timeframe.parse(timeframe)
    names = [symbols] if isinstance(symbols, str) else list(symbols)
    tables = []
    for symbol in sorted({normalize_symbol(s) for s in names}):
        if str(tf) == "1m":
            tables.append(generate_minutes(symbol, start, end, seed))
            continue
        lo = tf.floor(start)
        minutes = generate_minutes(symbol, lo, tf.next_start(end - timedelta(microseconds=1)), seed)
        rolled = rollup(minutes, tf)
        ts = rolled.column("ts").cast(pa.int64()).to_numpy()
        keep = (ts >= to_epoch_us(start)) & (ts < to_epoch_us(end))
        tables.append(rolled.filter(pa.array(keep)))
    return pa.concat_tables(tables) if tables else BAR_SCHEMA.empty_table()


class SyntheticProvider(Provider):
    """Offline bars for any symbol: stocks on NYSE sessions, ``*USDT``/``*-USD`` 24/7."""

    name: ClassVar[str] = "synthetic"
    timeframes: ClassVar[tuple[str, ...]] = ()  # any timeframe
    needs_network: ClassVar[bool] = False
    seed: int = 7

    async def fetch_bars(
        self, symbol: str, timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> AsyncGenerator[pa.Table, None]:
        tf = self.check_timeframe(timeframe)
        chunk = timedelta(days=30 if tf.is_intraday else 3650)
        lo = start
        while lo < end:
            hi = min(end, lo + chunk)
            table = generate_bars(symbol, tf, lo, hi, self.seed)
            if table.num_rows:
                yield table
            lo = hi
