"""Backtest speed: MarketLake's engine against backtesting.py, plain NumPy and vectorbt.

Same strategy everywhere: SMA(20) / SMA(50) crossover, long and short, always in the
market after the first cross (backtesting.py's ``SmaCross`` example with exclusive
orders), whole units, 10 bps commission, on synthetic 1-minute BTCUSDT bars.

1. One backtest on 1,000,000 bars including the full trade list and statistics.
   backtesting.py takes minutes at that size, so it runs on the first 100,000
   bars and its time is scaled by 10 (its loop is linear in bars; the script
   also times MarketLake on the same 100,000 bars for a like-for-like ratio).
   Plain NumPy (signals and an equity curve, no trades, no statistics) is the
   floor. vectorbt (installed by ``make`` from the ``bench`` extra) is timed
   warm, after one untimed call; without it the issue's reference figures are printed.
2. A cold ``marketlake backtest run`` on 1,000,000 stored bars: the whole
   process, after one untimed run that leaves the bytecode caches an installed
   package has (this environment sets PYTHONDONTWRITEBYTECODE).
3. A 100-combination sweep on 1,000,000 bars on all cores.

The machine has 2 cores shared with other work: every figure is a median, and the
in-process comparisons print CPU time next to wall time (CPU time is what a busy
machine disturbs least; each of these runs on one core).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from marketlake.backtest import BacktestConfig, get_strategy, run
from marketlake.backtest.data import Bars, split_symbols
from marketlake.backtest.sweep import run_sweep

os.environ.setdefault("TQDM_DISABLE", "1")  # backtesting.py's progress bars, before its import

RESULTS = Path(__file__).parent / "results"
N_BARS = 1_000_000
N_REFERENCE = 100_000
FAST, SLOW = 20, 50
CASH = 10_000_000.0
COMMISSION = 0.0001
# The figures for vectorbt on its reference machine (seconds).
VECTORBT_REFERENCE = {"warm": 0.37, "first call": 9.0, "import": 3.4}


class Timing:
    """Median wall and CPU seconds of repeated calls."""

    def __init__(self, wall: list[float], cpu: list[float]) -> None:
        self.wall, self.cpu = statistics.median(wall), statistics.median(cpu)

    def __str__(self) -> str:
        return f"{self.wall:8.3f} s wall {self.cpu:8.3f} s cpu"


def timed(func: Callable[[], Any], repeat: int) -> Timing:
    wall, cpu = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        func()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return Timing(wall, cpu)


def bars_1m() -> pa.Table:
    """One million synthetic 1-minute BTCUSDT bars (cached under bench/results)."""
    path = RESULTS / "btcusdt_1m.parquet"
    if not path.exists():
        from marketlake.providers.synthetic import generate_bars

        RESULTS.mkdir(parents=True, exist_ok=True)
        table = generate_bars(
            "BTCUSDT", "1m", datetime(2022, 1, 1, tzinfo=UTC), datetime(2023, 12, 1, tzinfo=UTC)
        )
        pq.write_table(table.slice(0, N_BARS), path)
    return pq.read_table(path)


def fresh(bars: Bars, n: int | None = None) -> Bars:
    """A copy without the indicator cache, so every timed run computes its averages."""
    cut = slice(0, n)
    return Bars(
        bars.symbol,
        bars.ts[cut],
        bars.open[cut],
        bars.high[cut],
        bars.low[cut],
        bars.close[cut],
        bars.volume[cut],
    )


def ours(bars: Bars) -> Any:
    config = BacktestConfig(cash=CASH, commission_bps=COMMISSION * 1e4, allow_short=True)
    return run([fresh(bars)], get_strategy("sma_cross", {"fast": FAST, "slow": SLOW}), config)


def plain_numpy(close: np.ndarray) -> float:
    """SMA signals and a position-times-return equity curve: no trades, no statistics."""
    csum = np.concatenate([[0.0], np.cumsum(close)])
    fast = ((csum[FAST:] - csum[:-FAST]) / FAST)[SLOW - FAST :]  # bar SLOW-1 onwards
    slow = (csum[SLOW:] - csum[:-SLOW]) / SLOW
    position = np.where(fast > slow, 1.0, -1.0)
    returns = close[SLOW:] / close[SLOW - 1 : -1] - 1
    equity = np.cumprod(1 + position[:-1] * returns)
    return float(equity[-1])


def backtesting_py(bars: Bars) -> int:
    """backtesting.py on ``bars``; returns its number of closed trades."""
    import pandas as pd
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover

    def sma(values: Any, n: int) -> Any:
        return pd.Series(values).rolling(n).mean()

    class SmaCross(Strategy):
        def init(self) -> None:
            self.fast = self.I(sma, self.data.Close, FAST)
            self.slow = self.I(sma, self.data.Close, SLOW)

        def next(self) -> None:
            if crossover(self.fast, self.slow):
                self.buy()
            elif crossover(self.slow, self.fast):
                self.sell()

    frame = pd.DataFrame(
        {
            "Open": bars.open,
            "High": bars.high,
            "Low": bars.low,
            "Close": bars.close,
            "Volume": bars.volume,
        },
        index=pd.to_datetime(bars.ts, unit="us"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = Backtest(
            frame, SmaCross, cash=CASH, commission=COMMISSION, exclusive_orders=True
        ).run()
    return int(stats["# Trades"])


def vectorbt_warm(bars: Bars) -> float | None:
    try:
        import vectorbt as vbt  # type: ignore[import-not-found]
    except ImportError:
        return None
    import pandas as pd

    close = pd.Series(bars.close)

    def once() -> None:
        fast = vbt.MA.run(close, FAST).ma
        slow = vbt.MA.run(close, SLOW).ma
        portfolio = vbt.Portfolio.from_signals(
            close, fast > slow, fast < slow, fees=COMMISSION, init_cash=CASH
        )
        _ = portfolio.trades.records_readable
        with warnings.catch_warnings():  # ratios that need a frequency: not compared here
            warnings.simplefilter("ignore", UserWarning)
            portfolio.stats()

    once()
    return timed(once, 3).wall


def cold_cli() -> Timing:
    """A whole ``marketlake backtest run`` process on 1M stored bars: median wall and CPU time."""
    from marketlake.store import open_store

    path = RESULTS / "bench_backtest.duckdb"
    uri = f"duckdb:///{path}"
    with open_store(uri) as store:
        if not store.count_bars("BTCUSDT", "1m"):
            store.ensure_instruments(["BTCUSDT"])
            store.write_bars(bars_1m())
        store.execute("DELETE FROM backtests")  # each measured run stores one result
    command = [
        str(Path(sys.executable).parent / "marketlake"),
        "--store",
        uri,
        "backtest",
        "run",
        "-s",
        "sma_cross",
        "--symbol",
        "BTCUSDT",
        "-t",
        "1m",
        "-p",
        f"fast={FAST}",
        "-p",
        f"slow={SLOW}",
        "--commission",
        "10",
        "--allow-short",
        "--fractional",
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(RESULTS / "pycache")
    subprocess.run(command, env=env, check=True, capture_output=True)  # bytecode caches
    wall, cpu = [], []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        wall.append(time.perf_counter() - start)
        cpu.append(_child_cpu(before))
    return Timing(wall, cpu)


def _child_cpu(before: resource.struct_rusage) -> float:
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def sweep(bars: Bars) -> tuple[float, float]:
    """100 combinations on all cores: wall seconds and CPU seconds of all processes."""
    grid = {"fast": list(range(5, 55, 5)), "slow": list(range(60, 260, 20))}
    config = BacktestConfig(
        cash=CASH, commission_bps=COMMISSION * 1e4, allow_short=True, fractional=True
    )
    before, cpu = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    start = time.perf_counter()
    result = run_sweep([fresh(bars)], "sma_cross", grid, config, jobs=os.cpu_count())
    seconds = time.perf_counter() - start
    assert len(result.rows) == 100
    return seconds, time.process_time() - cpu + _child_cpu(before)


def main() -> None:
    print(f"load average before the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    table = bars_1m()
    [bars] = split_symbols(table)
    assert len(bars) == N_BARS
    result = ours(bars)
    t_ours = timed(lambda: ours(bars), 7)
    print(
        f"SMA {FAST}/{SLOW} cross on {N_BARS:,} 1m bars, long/short, whole units, "
        f"{COMMISSION:.2%} commission: {result.trades.num_rows:,} trades"
    )
    print(f"  marketlake engine, trades + statistics  {t_ours}")
    t_numpy = timed(lambda: plain_numpy(bars.close), 7)
    print(
        f"  plain NumPy, signals + equity only      {t_numpy}   marketlake takes "
        f"{t_ours.cpu / t_numpy.cpu:.1f}x its CPU time"
    )

    small = fresh(bars, N_REFERENCE)
    t_small = timed(lambda: ours(small), 7)
    small_trades = ours(small).stats["trades"]
    theirs_trades = backtesting_py(small)
    t_bt = timed(lambda: backtesting_py(small), 3)
    print(
        f"  backtesting.py on {N_REFERENCE:,} bars       {t_bt}   ({theirs_trades:,} "
        f"closed trades; marketlake: {small_trades:,} in {t_small.cpu:.4f} s cpu, "
        f"{t_bt.cpu / t_small.cpu:,.0f}x faster)"
    )
    scale = N_BARS / N_REFERENCE
    print(
        f"  backtesting.py x{scale:.0f} for {N_BARS:,} bars  {t_bt.wall * scale:8.3f} s wall "
        f"{t_bt.cpu * scale:8.3f} s cpu   marketlake is {t_bt.cpu * scale / t_ours.cpu:,.0f}x "
        f"faster by CPU, {t_bt.wall * scale / t_ours.wall:,.0f}x by wall (target >= 200x)"
    )

    t_vbt = vectorbt_warm(bars)
    if t_vbt is None:
        ref = VECTORBT_REFERENCE["warm"]
        print(
            f"  vectorbt: not installed here; the issue's warm figure is {ref} s, "
            f"{ref / t_ours.wall:.1f}x marketlake's wall time (target > 1x)"
        )
    else:
        print(
            f"  vectorbt (warm)                         {t_vbt:8.3f} s wall   "
            f"marketlake is {t_vbt / t_ours.wall:.1f}x faster (target > 1x)"
        )

    t_cli = cold_cli()
    print(
        f"cold `marketlake backtest run` on {N_BARS:,} stored bars (whole process: start-up, "
        f"loading, backtest, storing the result): {t_cli} (target <= 2 s)"
    )

    t_sweep, cpu_sweep = sweep(bars)
    print(
        f"100-combination sweep on {N_BARS:,} bars, {os.cpu_count()} worker processes: "
        f"{t_sweep:.2f} s wall, {cpu_sweep:.2f} s cpu in all processes (target <= 10 s)"
    )
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
