"""Write the real-shaped CSV fixtures of this folder (run: python tests/data/csv/generate.py).

Each file has the layout a real export has (the header, the date format, the number
format, the column order); the prices are a seeded random walk on the real trading
days of the XNYS calendar, so the files are the same on every run.
"""

from __future__ import annotations

import json
from pathlib import Path

import exchange_calendars as xcals
import numpy as np

HERE = Path(__file__).resolve().parent


def walk(n: int, start: float, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    close = start * np.exp(np.cumsum(rng.normal(0.0003, 0.012, n)))
    open_ = np.r_[start, close[:-1]] * np.exp(rng.normal(0, 0.003, n))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n))
    volume = rng.integers(1_000_000, 5_000_000, n) * 100
    return open_, high, low, close, volume


def main() -> None:
    nyse = xcals.get_calendar("XNYS")
    # 1. A date-only daily index file of five years (Yahoo's download layout).
    days = nyse.sessions_in_range("2016-01-04", "2020-12-31")
    o, h, lo, c, v = walk(len(days), 2012.66, 1)
    rows = ["Date,Open,High,Low,Close,Adj Close,Volume"]
    for d, *vals in zip(days, o, h, lo, c, c, v, strict=True):
        rows.append(f"{d:%Y-%m-%d}," + ",".join(f"{x:.6f}" for x in vals[:5]) + f",{vals[5]}")
    (HERE / "index_daily.csv").write_text("\n".join(rows) + "\n")

    march = nyse.sessions_in_range("2024-03-01", "2024-03-28")
    o, h, lo, c, v = walk(len(march), 179.55, 2)
    # 2. US dates, month first (Nasdaq, Investing.com): 03/04/2024 is 4 March.
    rows = ["Date,Open,High,Low,Close,Volume"]
    for d, *vals in zip(march, o, h, lo, c, v, strict=True):
        rows.append(f"{d:%m/%d/%Y}," + ",".join(f"{x:.2f}" for x in vals[:4]) + f",{vals[4]}")
    (HERE / "us_dates.csv").write_text("\n".join(rows) + "\n")
    # 3. Decimal commas with ';' between columns (a European spreadsheet's export).
    rows = ["Date;Open;High;Low;Close;Volume"]
    for d, *vals in zip(march, o, h, lo, c, v, strict=True):
        prices = ";".join(f"{x:.2f}".replace(".", ",") for x in vals[:4])
        rows.append(f"{d:%Y-%m-%d};{prices};{vals[4]}")
    (HERE / "decimal_comma.csv").write_text("\n".join(rows) + "\n")
    # 4. MetaTrader 4 history export: headerless date, time, o, h, l, c, volume.
    fx = walk(len(march), 1.08500, 3)
    rows = []
    for d, *vals in zip(march, *fx, strict=True):
        rows.append(
            f"{d:%Y.%m.%d},00:00," + ",".join(f"{x:.5f}" for x in vals[:4]) + f",{vals[4] // 1000}"
        )
    (HERE / "metatrader4_daily.csv").write_text("\r\n".join(rows) + "\r\n")
    # 5. MetaTrader 5 export: tab-separated, <DATE> <TIME> headers, hourly, server time.
    rows = ["<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>"]
    hours = [(d, hh) for d in march[:3] for hh in range(9, 17)]
    fx = walk(len(hours), 1.08500, 4)
    for (d, hh), *vals in zip(hours, *fx, strict=True):
        prices = "\t".join(f"{x:.5f}" for x in vals[:4])
        rows.append(f"{d:%Y.%m.%d}\t{hh:02d}:00:00\t{prices}\t{vals[4] // 10000}\t0\t2")
    (HERE / "metatrader5_h1.csv").write_text("\n".join(rows) + "\n")
    # 6. yfinance >= 0.2.51: yf.download("AAPL").to_csv() writes three header rows.
    rows = ["Price,Close,High,Low,Open,Volume", "Ticker,AAPL,AAPL,AAPL,AAPL,AAPL", "Date,,,,,"]
    for d, *vals in zip(march, o, h, lo, c, v, strict=True):
        op, hi, low, cl, vol = vals
        rows.append(f"{d:%Y-%m-%d},{float(cl)!r},{float(hi)!r},{float(low)!r},{float(op)!r},{vol}")
    (HERE / "yfinance_multiheader.csv").write_text("\n".join(rows) + "\n")
    # 7. Binance public data (data.binance.vision): the headerless 12-column kline dump
    #    and the variant with a header row, built from the REST answers of tests/data.
    klines: list[list[object]] = []
    for page in (1, 2, 3):
        path = HERE.parent / "binance" / f"klines_BTCUSDT_1m_page{page}.json"
        klines += json.loads(path.read_text())
    lines = [",".join(str(x) for x in k) for k in klines]
    (HERE / "BTCUSDT-1m-2024-03-04.csv").write_text("\n".join(lines) + "\n")
    header = (
        "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
        "taker_buy_volume,taker_buy_quote_volume,ignore"
    )
    (HERE / "BTCUSDT-1m-2024-03-04-header.csv").write_text("\n".join([header, *lines]) + "\n")


if __name__ == "__main__":
    main()
