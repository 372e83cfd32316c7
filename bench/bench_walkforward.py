"""Walk-forward speed: 10 windows × 400 combinations of SMA-cross on 1,000,000 1m bars.

Target: ≤ 30 s on 2 cores. The comparison is the same work done the way a user of
backtesting.py would: ``Backtest.optimize`` per window. backtesting.py takes minutes
per window at this size, so it is timed on one window of 100,000 bars × 16
combinations and scaled linearly (its loop is linear in bars and combinations); the
script also times MarketLake on exactly that reduced job for a like-for-like ratio.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import pandas as pd

from marketlake.backtest.data import Bars
from marketlake.backtest.engine import BacktestConfig
from marketlake.backtest.walkforward import walk_forward

QUICK = os.environ.get("MARKETLAKE_BENCH_QUICK") == "1"
BARS = 200_000 if QUICK else 1_000_000
GRID = {"fast": list(range(2, 42, 2)), "slow": list(range(50, 450, 20))}  # 20 × 20 = 400


def _bars(n: int) -> Bars:
    rng = np.random.default_rng(17)
    ts = 1_704_067_200_000_000 + np.arange(n, dtype=np.int64) * 60_000_000
    close = 40_000 * np.exp(np.cumsum(rng.normal(0, 0.0008, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.maximum(open_, close) * 1.0004
    low = np.minimum(open_, close) * 0.9996
    return Bars("BTCUSDT", ts, open_, high, low, close, np.full(n, 5.0))


try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from backtesting import Backtest, Strategy
        from backtesting.lib import crossover
        from backtesting.test import SMA

    class BtSmaCross(Strategy):  # type: ignore[misc]
        """Module level: backtesting.py's optimize pickles the class to its workers."""

        fast = 10
        slow = 50

        def init(self) -> None:
            self.a = self.I(SMA, self.data.Close, self.fast)
            self.b = self.I(SMA, self.data.Close, self.slow)

        def next(self) -> None:
            if crossover(self.a, self.b):
                self.position.close()
                self.buy()
            elif crossover(self.b, self.a):
                self.position.close()
                self.sell()

except ImportError:  # pragma: no cover - a dev dependency
    BtSmaCross = None


def _backtesting_py(bars: Bars, windows_bars: int, combos: int) -> float | None:
    if BtSmaCross is None:
        return None
    frame = pd.DataFrame(
        {"Open": bars.open, "High": bars.high, "Low": bars.low, "Close": bars.close,
         "Volume": bars.volume},
        index=pd.to_datetime(bars.ts, unit="us"),
    )[:windows_bars]  # fmt: skip
    side = int(np.sqrt(combos))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Backtest(frame, BtSmaCross, cash=1e9, finalize_trades=True).optimize(
            fast=GRID["fast"][:side], slow=GRID["slow"][:side], maximize="Sharpe Ratio"
        )
    return time.perf_counter() - start


def main() -> None:
    bars = _bars(BARS)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = walk_forward([bars], "sma_cross", GRID, BacktestConfig(fractional=True),
                          windows=10, train_ratio=3.0,
                          objective="sharpe")  # fmt: skip
    ours = time.perf_counter() - start
    print(f"load average {load:.2f} → {os.getloadavg()[0]:.2f} (2 cores)")
    print(
        f"  MarketLake walk-forward 10 windows × 400 combinations on {BARS:,} 1m bars: "
        f"{ours:.1f} s (target ≤ 30 s: {'met' if ours <= 30 else 'NOT met'}); "
        f"OOS return {result.stats['total_return_pct']:.2f} %"
    )
    small = _bars(130_000)
    start = time.perf_counter()
    walk_forward([small], "sma_cross", {"fast": GRID["fast"][:4], "slow": GRID["slow"][:4]},
                 BacktestConfig(fractional=True), windows=1, train_ratio=3.0, jobs=1)  # fmt: skip
    ours_small = time.perf_counter() - start
    theirs = _backtesting_py(small, 100_000, 16)
    if theirs is None:
        print("  backtesting.py not installed")
        return
    print(
        f"  one window of 100,000 bars × 16 combinations: MarketLake {ours_small:.2f} s, "
        f"backtesting.py optimize {theirs:.1f} s, ratio {theirs / ours_small:,.0f}×"
    )
    scaled = theirs * (BARS * 0.75 / 100_000) * (400 / 16) * 10
    print(f"  backtesting.py scaled to the full job: about {scaled / 60:,.0f} min")


if __name__ == "__main__":
    main()
