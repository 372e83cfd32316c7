"""Roll-ups and validation of 1-minute bars against what a user would otherwise reach for.

Two synthetic data sets of 10M 1-minute bars over 20 symbols each (500k bars a
symbol, NumPy random walks, sorted by symbol and time as the store returns them,
one Arrow chunk):

* **crypto**: 20 pairs trading 24/7 (about 347 days each);
* **stocks**: 20 US stocks, only minutes inside the XNYS sessions of
  ``exchange-calendars`` (about five years each, half days included).

Both carry a sprinkle of defects (a few dozen rows each of high below low,
negative volume, NaN close, misaligned and repeated timestamps, stale closes,
outliers, one split-like jump, 1,000 dropped rows; stock bars moved out of their
session), so the rules find something, as they do on real data.

Measured in one run, medians of ``REPEAT`` runs (pandas: one run, it is slow),
after one untimed warm-up of MarketLake (compiled kernels, calendars):

* **roll-up** of the crypto bars to 5m, 1h and 1d, and of the stock bars to 1d
  through the session-aware path (the New York session, DST included), in input
  rows/s; against pandas ``groupby("symbol").resample``, Polars
  ``group_by_dynamic`` (tz-converted for the New York day) and DuckDB SQL over a
  native table with integer bucketing of ``epoch_us`` (``arg_min``/``arg_max`` for
  open and close, sorted output). Every tool computes the same columns: first
  open, max high, min low, last close, summed volume and trades, volume-weighted
  vwap. MarketLake's 1h bars must equal pandas' exactly (asserted);
* **validation**: every rule (row rules, calendar rules, gaps, stale closes,
  outliers, split-like jumps) through :func:`marketlake.quality.rules.apply_policy`,
  the entry point ingest and CSV import use, in rows/s; against the row rules
  alone (OHLC, prices, volume, duplicates, alignment) written in pandas, which
  is far less than MarketLake checks.

``python -m bench bench_aggregate --quick`` (or ``MARKETLAKE_BENCH_QUICK=1``) uses a
tenth of every size.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import duckdb
import exchange_calendars as xcals
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa

from bench.common import median_time, report
from marketlake.quality.rules import apply_policy
from marketlake.schema import BAR_SCHEMA, constant_column
from marketlake.timeseries.aggregate import rollup

Array = np.ndarray[Any, Any]
CRYPTO = (
    "BTCUSDT",
    "ETHUSDT",
    "SOLUSDT",
    "BNBUSDT",
    "XRPUSDT",
    "ADAUSDT",
    "DOGEUSDT",
    "TRXUSDT",
    "DOTUSDT",
    "LINKUSDT",
    "LTCUSDT",
    "BCHUSDT",
    "AVAXUSDT",
    "XLMUSDT",
    "ATOMUSDT",
    "ETCUSDT",
    "FILUSDT",
    "NEARUSDT",
    "APTUSDT",
    "ARBUSDT",
)
STOCKS = (
    "AAPL",
    "MSFT",
    "NVDA",
    "AMZN",
    "META",
    "GOOGL",
    "TSLA",
    "JPM",
    "V",
    "UNH",
    "XOM",
    "JNJ",
    "WMT",
    "PG",
    "MA",
    "HD",
    "CVX",
    "KO",
    "PEP",
    "COST",
)
MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US
CRYPTO_START_US = 1_672_531_200_000_000  # 2023-01-01T00:00Z
NEW_YORK = "America/New_York"
REPEAT = 3
ROLLUP_TARGET = 40e6  # input rows/s for 1h (issue 5)
VALIDATE_TARGET = 20e6  # rows/s, every rule


# -- data ------------------------------------------------------------------------------


def crypto_minutes(n: int) -> Array:
    return CRYPTO_START_US + np.arange(n, dtype=np.int64) * MINUTE_US


def session_minutes(n: int) -> Array:
    """The first ``n`` minute-bar starts inside XNYS sessions from 2019-01-02."""
    calendar = xcals.get_calendar("XNYS", start="2019-01-01", end="2030-12-31")
    schedule = calendar.schedule
    opens = _epoch_us(schedule["open"])
    closes = _epoch_us(schedule["close"])
    counts = (closes - opens) // MINUTE_US
    sessions = int(np.searchsorted(np.cumsum(counts), n)) + 1
    opens, counts = opens[:sessions], counts[:sessions]
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return (np.repeat(opens, counts) + within * MINUTE_US)[:n]


def _epoch_us(column: pd.Series) -> Array:
    return np.asarray(
        column.dt.tz_convert("UTC")
        .dt.tz_localize(None)
        .to_numpy()
        .astype("datetime64[us]")
        .astype(np.int64)
    )


def minute_bars(symbols: tuple[str, ...], per_symbol: int, stocks: bool, seed: int) -> pa.Table:
    """Random-walk 1-minute bars of ``symbols`` with a few defects, sorted by (symbol, ts)."""
    rng = np.random.default_rng(seed)
    times = session_minutes(per_symbol) if stocks else crypto_minutes(per_symbol)
    n = per_symbol * len(symbols)
    ts = np.tile(times, len(symbols))
    steps = rng.normal(0.0, 1e-3, n).reshape(len(symbols), per_symbol)
    close = (100.0 * np.exp(np.cumsum(steps, axis=1))).ravel()
    open_ = np.concatenate([[100.0], close[:-1]])
    open_[::per_symbol] = 100.0  # each series opens at 100
    spread = np.abs(rng.normal(0.0, 5e-4, n)) * close
    high = np.maximum(open_, close) + spread
    low = np.minimum(open_, close) - spread
    columns = {
        "ts": ts,
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": rng.gamma(2.0, 50.0, n).round(3),
        "trades": rng.integers(1, 500, n),
        "vwap": (high + low + close) / 3,
    }
    keep = _add_defects(columns, rng, per_symbol, stocks)
    table = pa.table(
        {
            "symbol": pa.concat_arrays([constant_column(s, per_symbol) for s in symbols]),
            "timeframe": constant_column("1m", n),
            "ts": pa.array(ts).cast(BAR_SCHEMA.field("ts").type),
            **{
                name: columns[name]
                for name in ("open", "high", "low", "close", "volume", "trades", "vwap")
            },
            "source": constant_column("bench", n),
        }
    ).cast(BAR_SCHEMA)
    return table.filter(pa.array(keep)).combine_chunks()


def _add_defects(
    c: dict[str, Array], rng: np.random.Generator, per_symbol: int, stocks: bool
) -> Array:
    """Spoil a few dozen rows in place; return the mask of rows kept (1,000 are dropped)."""
    n = len(c["ts"])

    def rows(count: int) -> Array:  # never a series' first or last two rows
        picked = rng.choice(n, count, replace=False)
        return picked[(picked % per_symbol > 1) & (picked % per_symbol < per_symbol - 2)]

    swap = rows(40)
    c["high"][swap], c["low"][swap] = c["low"][swap], c["high"][swap].copy()
    c["volume"][rows(40)] = -1.0
    c["close"][rows(20)] = np.nan
    c["ts"][rows(20)] += 1_000_000  # a second late: misaligned
    repeated = rows(20)
    c["ts"][repeated] = c["ts"][repeated - 1]  # two bars at one time, different values
    for first in rows(20)[:, None] + np.arange(15):  # 15 equal closes while volume trades
        c["close"][first] = c["close"][first[0]]
        c["open"][first[1:]] = c["close"][first[0]]
        c["high"][first] = np.maximum(c["high"][first], c["close"][first[0]])
        c["low"][first] = np.minimum(c["low"][first], c["close"][first[0]])
    jumps = rows(10)
    c["close"][jumps] *= 1.3
    c["high"][jumps] = np.maximum(c["high"][jumps], c["close"][jumps])
    split = per_symbol // 2  # the first series halves its prices half-way
    for name in ("open", "high", "low", "close", "vwap"):
        c[name][split:per_symbol] /= 2.0
    if stocks:  # the last bar of some sessions moved 30 minutes past the close
        last = np.flatnonzero(np.diff(c["ts"]) > 6 * HOUR_US)
        moved = rng.choice(last, 20, replace=False)
        c["ts"][moved] += 30 * MINUTE_US
    keep = np.ones(n, dtype=bool)
    keep[rows(1000)] = False
    return keep


# -- roll-ups -------------------------------------------------------------------------


def pandas_rollup(frame: pd.DataFrame, rule: str, tz: str | None = None) -> pd.DataFrame:
    """What a pandas user writes: per symbol, ``resample`` and the seven aggregations."""
    frame = frame.assign(pv=frame["vwap"] * frame["volume"])
    if tz is not None:
        frame["ts"] = frame["ts"].dt.tz_convert(tz)
    values = ["ts", "open", "high", "low", "close", "volume", "trades", "pv"]
    out = (
        frame.groupby("symbol")[values]
        .resample(rule, on="ts", origin="epoch", closed="left", label="left")
        .agg(
            open=("open", "first"),
            high=("high", "max"),
            low=("low", "min"),
            close=("close", "last"),
            volume=("volume", "sum"),
            trades=("trades", "sum"),
            pv=("pv", "sum"),
            bars=("open", "size"),
        )
    )
    out = out[out["bars"] > 0].reset_index()
    out["vwap"] = (out["pv"] / out["volume"]).where(out["volume"] != 0)
    return out


def polars_rollup(frame: pl.DataFrame, every: str, tz: str | None = None) -> pl.DataFrame:
    if tz is not None:
        frame = frame.with_columns(pl.col("ts").dt.convert_time_zone(tz))
    return frame.group_by_dynamic("ts", every=every, group_by="symbol").agg(
        pl.col("open").first(),
        pl.col("high").max(),
        pl.col("low").min(),
        pl.col("close").last(),
        pl.col("volume").sum(),
        pl.col("trades").sum(),
        ((pl.col("vwap") * pl.col("volume")).sum() / pl.col("volume").sum()).alias("vwap"),
    )


def duckdb_sql(step_us: int, tz: str | None = None) -> str:
    """Integer bucketing of the epoch (of local time for a daily bar in ``tz``)."""
    ts = f"timezone('{tz}', ts)" if tz else "ts"
    return (
        f"SELECT symbol, epoch_us({ts}) // {step_us} AS bucket, arg_min(open, ts) AS open, "
        "max(high) AS high, min(low) AS low, arg_max(close, ts) AS close, "
        "sum(volume) AS volume, sum(trades) AS trades, "
        "sum(vwap * volume) / sum(volume) AS vwap "
        "FROM bars GROUP BY symbol, bucket ORDER BY symbol, bucket"
    )


def assert_same_as_pandas(ours: pa.Table, theirs: pd.DataFrame) -> None:
    """Every bar equal: symbols, labels and each value (NaN equal to NaN)."""
    got = ours.to_pandas()
    assert list(got["symbol"]) == list(theirs["symbol"]), "symbols differ"
    assert got["ts"].equals(theirs["ts"]), "bucket labels differ"
    for column in ("open", "high", "low", "close", "volume", "vwap", "trades"):
        mine = got[column].to_numpy(dtype=float, na_value=np.nan)
        other = theirs[column].to_numpy(dtype=float, na_value=np.nan)
        assert np.array_equal(mine, other, equal_nan=True), f"{column} differs from pandas"


def bench_rollups(
    name: str, data: pa.Table, cases: list[tuple[str, str, str, int]], tz: str | None = None
) -> None:
    """Roll ``data`` up to each case ``(target, pandas rule, Polars every, bucket µs)``."""
    rollup(data, "1d")  # warm-up: compiled kernels and calendars loaded, as in a service
    frame, polars_frame = data.to_pandas(), pl.from_arrow(data)
    assert isinstance(polars_frame, pl.DataFrame)
    con = duckdb.connect()
    con.register("source", data)
    con.execute("CREATE TABLE bars AS SELECT * FROM source")
    con.unregister("source")
    rows = data.num_rows
    for target, rule, every, step in cases:
        ours = median_time(lambda t=target: rollup(data, t), REPEAT)  # type: ignore[misc]
        began = time.perf_counter()
        reference = pandas_rollup(frame, rule, tz)
        others = {"pandas groupby+resample": time.perf_counter() - began}
        others["Polars group_by_dynamic"] = median_time(
            lambda e=every: polars_rollup(polars_frame, e, tz), REPEAT
        )  # type: ignore[misc]
        sql = duckdb_sql(step, tz)
        others["DuckDB SQL (int buckets)"] = median_time(
            lambda q=sql: con.execute(q).to_arrow_table(), REPEAT
        )  # type: ignore[misc]
        goal = ""
        if target == "1h":
            assert_same_as_pandas(rollup(data, target), reference)
            goal = f"{_goal(rows / ours, ROLLUP_TARGET)}; output identical to pandas"
        report(
            f"roll up {rows:,} 1m bars of {name} to {target}: {len(reference):,} bars",
            rows,
            ours,
            others,
            goal,
        )
    con.close()


# -- validation -----------------------------------------------------------------------


def pandas_row_rules(frame: pd.DataFrame) -> pd.Series:
    """The row rules alone, as a pandas user writes them: a mask of the bad rows."""
    prices = frame[["open", "high", "low", "close"]]
    bad_price = ~((prices > 0) & np.isfinite(prices)).all(axis=1)
    o, h, lo, c = (frame[name] for name in ("open", "high", "low", "close"))
    bad_ohlc = (lo > np.minimum(o, c)) | (h < np.maximum(o, c)) | (lo > h)
    volume = frame["volume"]
    bad_volume = ~((volume >= 0) & np.isfinite(volume))
    misaligned = frame["ts"].dt.floor("1min") != frame["ts"]
    repeats = frame[frame.duplicated(["symbol", "timeframe", "ts"], keep=False)]
    conflict = frame.index.isin(repeats.index[~repeats.duplicated(keep=False)])
    return bad_price | bad_ohlc | bad_volume | misaligned | conflict


def bench_validation(name: str, data: pa.Table) -> None:
    kept, found = apply_policy(data)  # warm-up: kernels, calendar
    rows = data.num_rows
    ours = median_time(lambda: apply_policy(data), REPEAT)
    frame = data.to_pandas()
    others = {"pandas, row rules only": median_time(lambda: pandas_row_rules(frame), 1)}
    counts = ", ".join(f"{rule} {n}" for rule, n in sorted(found.counts.items()))
    report(
        f"validate {rows:,} 1m bars of {name}, every rule "
        f"({rows - kept.num_rows} rejected; found: {counts})",
        rows,
        ours,
        others,
        _goal(rows / ours, VALIDATE_TARGET),
    )


# -- reporting ------------------------------------------------------------------------


def _goal(per_second: float, target: float) -> str:
    met = "met" if per_second >= target else "NOT met"
    return f"(target >= {target / 1e6:.0f} M rows/s: {met})"


def main() -> None:
    """Run every comparison and print the figures and ratios."""
    quick = "--quick" in sys.argv[1:] or os.environ.get("MARKETLAKE_BENCH_QUICK") == "1"
    per_symbol = 500_000 // (10 if quick else 1)
    print(
        f"bench_aggregate{' (quick: a tenth of every size)' if quick else ''}: "
        f"20 symbols x {per_symbol:,} 1m bars per data set",
        flush=True,
    )
    began = time.perf_counter()
    crypto = minute_bars(CRYPTO, per_symbol, stocks=False, seed=1)
    stocks = minute_bars(STOCKS, per_symbol, stocks=True, seed=2)
    print(f"(data generated in {time.perf_counter() - began:.1f} s)", flush=True)
    bench_rollups(
        "20 crypto pairs (24/7)",
        crypto,
        [
            ("5m", "5min", "5m", 5 * MINUTE_US),
            ("1h", "1h", "1h", HOUR_US),
            ("1d", "1D", "1d", DAY_US),
        ],
    )
    bench_rollups(
        "20 US stocks (XNYS sessions, New York days)",
        stocks,
        [("1d", "1D", "1d", DAY_US)],
        tz=NEW_YORK,
    )
    bench_validation("20 crypto pairs (24/7)", crypto)
    bench_validation("20 US stocks (XNYS sessions)", stocks)


if __name__ == "__main__":
    main()
