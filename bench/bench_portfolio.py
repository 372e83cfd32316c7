"""Portfolio backtest speed: MarketLake against bt and vectorbt.

A monthly-rebalanced momentum top-10 portfolio (rank by 252-bar trailing return,
hold the best 10 equally weighted) of 100 symbols × 10 years of daily bars
(synthetic random walks, 2,520 bars each), fills at the close, fractional units,
no costs, so that every tool computes the same portfolio:

* MarketLake: ``run_portfolio`` with ``MomentumTopN`` (warm: numba compiled once).
* bt: ``WeighTarget → Rebalance`` with the same target weights on the same rows.
* vectorbt: ``Portfolio.from_orders`` with target percents on the rebalance rows
  (``size_type="targetpercent"``, ``group_by=True``, ``cash_sharing=True``,
  ``call_seq="auto"``), the weights computed with NumPy.

Each figure is the median of several runs (bt once: it takes seconds); the final
equities are printed so the three can be compared. The target is ≤ 0.5 s.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from marketlake.backtest.data import Bars
from marketlake.backtest.portfolio import (
    MomentumTopN,
    Panel,
    PortfolioConfig,
    decision_rows,
    run_portfolio,
)

QUICK = os.environ.get("MARKETLAKE_BENCH_QUICK") == "1"
SYMBOLS = 30 if QUICK else 100
YEARS = 4 if QUICK else 10
LOOKBACK = 252
TOP = 10


def _bars() -> list[Bars]:
    rng = np.random.default_rng(11)
    days = pd.bdate_range("2014-01-01", periods=252 * YEARS, tz="UTC")
    ts = (days.asi8 // 1000).astype(np.int64)
    out = []
    for i in range(SYMBOLS):
        close = 50 * np.exp(np.cumsum(rng.normal(0.0003, 0.02, len(ts))))
        out.append(Bars(f"S{i:03d}", ts, close, close * 1.01, close * 0.99, close, close * 0 + 1e6))
    return out


def _timed(work: Callable[[], Any], runs: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    bars = _bars()
    config = PortfolioConfig(cash=1_000_000, rebalance="monthly", fill="close", fractional=True)
    strategy = MomentumTopN(top=TOP, lookback=LOOKBACK)
    run_portfolio(bars[:2], strategy, config)  # compile once
    ours, result = _timed(lambda: run_portfolio(bars, strategy, config), 5)
    print(
        f"load average {os.getloadavg()[0]:.2f} (2 cores); {SYMBOLS} symbols × "
        f"{len(bars[0]):,} daily bars, momentum top-{TOP}, monthly"
    )
    print(f"  MarketLake  {ours * 1000:9.1f} ms   final equity {result.equity[-1]:,.2f}")

    prices = pd.DataFrame(
        {b.symbol: b.close for b in bars}, index=pd.to_datetime(bars[0].ts, unit="us")
    )
    panel = Panel.of(bars)
    weights = strategy.weights(panel)
    rows = decision_rows(panel.ts, "monthly") & ~np.isnan(weights).all(axis=1)
    try:
        import bt

        # bt gets the same target weights on the same rows (ranking is a tiny part of the
        # work; bt's SelectMomentum ranks over calendar offsets, not bars)
        targets = pd.DataFrame(weights[rows], index=prices.index[rows], columns=prices.columns)

        def run_bt() -> Any:
            strategy_bt = bt.Strategy("mom", [bt.algos.WeighTarget(targets), bt.algos.Rebalance()])
            test = bt.Backtest(
                strategy_bt,
                prices,
                initial_capital=1_000_000,
                integer_positions=False,
                progress_bar=False,
            )
            return bt.run(test).backtests["mom"].strategy.values.to_numpy()

        theirs, value = _timed(run_bt, 1)
        print(
            f"  bt          {theirs * 1000:9.1f} ms   ratio {theirs / ours:,.0f}×   "
            f"final equity {value[-1]:,.2f}"
        )
    except ImportError:
        print("  bt not installed (make install: it is a test dependency)")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import vectorbt as vbt

        size = np.where(rows[:, None], np.nan_to_num(weights), np.nan)

        def run_vbt() -> Any:
            pf = vbt.Portfolio.from_orders(
                prices,
                size=size,
                size_type="targetpercent",
                group_by=True,
                cash_sharing=True,
                call_seq="auto",
                init_cash=1_000_000,
            )
            return pf.value().to_numpy()

        run_vbt()
        vec, value = _timed(run_vbt, 3)
        print(
            f"  vectorbt    {vec * 1000:9.1f} ms   ratio {vec / ours:,.1f}×   "
            f"final equity {value[-1]:,.2f}"
        )
    except ImportError:
        print("  vectorbt not installed (the bench extra)")
    print(f"  target ≤ 500 ms: {'met' if ours <= 0.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
