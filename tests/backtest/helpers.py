"""Bars for the backtest tests: GOOG daily (bundled with backtesting.py) and hand-made series."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from marketlake.backtest.data import Bars

DAY_US = 86_400_000_000
START_US = 1_704_067_200_000_000  # 2024-01-01T00:00Z


def goog() -> Bars:
    """GOOG daily 2004-08-19 .. 2013-03-01 (2148 bars), as shipped inside backtesting.py."""
    from backtesting.test import GOOG

    ts = GOOG.index.tz_localize("UTC").asi8 // 1000
    return Bars(
        "GOOG",
        ts.astype(np.int64),
        *(GOOG[c].to_numpy(np.float64) for c in ("Open", "High", "Low", "Close", "Volume")),
    )


def make_bars(
    close: Sequence[float],
    *,
    open_: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
    low: Sequence[float] | None = None,
    symbol: str = "TEST",
    start_us: int = START_US,
    step_us: int = DAY_US,
) -> Bars:
    """Daily bars from explicit prices; open defaults to the close, high/low to max/min."""
    c = np.asarray(close, dtype=np.float64)
    o = np.asarray(open_ if open_ is not None else close, dtype=np.float64)
    h = np.asarray(high, dtype=np.float64) if high is not None else np.maximum(o, c)
    lo = np.asarray(low, dtype=np.float64) if low is not None else np.minimum(o, c)
    ts = start_us + step_us * np.arange(len(c), dtype=np.int64)
    return Bars(symbol, ts, o, h, lo, c, np.ones(len(c)))
