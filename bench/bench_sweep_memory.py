"""Sweep memory: peak RSS of a streamed sweep is flat in the number of combinations.

SMA-cross over 100,000 1h bars, the grid grown from a few thousand combinations
upwards, each size in a fresh process (``marketlake backtest sweep --output X.csv``,
2 workers) whose peak RSS, with its children's, is read from ``getrusage``. Beside
it, the in-memory sweep (``--output X.parquet``: every row held until the end, as
before this change and as ``Backtest.optimize`` or a vectorbt grid keeps them) at
the sizes it can take. Target: 1,000,000 combinations within 1 GB; set
``BENCH_SWEEP_COMBOS=1000000`` to run that size (about half an hour on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

QUICK = os.environ.get("MARKETLAKE_BENCH_QUICK") == "1"
SIZES = [int(os.environ["BENCH_SWEEP_COMBOS"])] if "BENCH_SWEEP_COMBOS" in os.environ else (
    [1_000, 4_000] if QUICK else [2_000, 8_000, 32_000]
)  # fmt: skip
EXE = str(Path(sys.executable).parent / "marketlake")


def _grid(combos: int) -> list[str]:
    # fast in 2..(1 + a), slow in 200..(199 + b): every pair valid, a * b == combos
    a = 100 if combos >= 10_000 else 20
    return ["-p", f"fast=2:{1 + a}:1", "-p", f"slow=200:{199 + combos // a}:1"]


def _run(combos: int, suffix: str, folder: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, the largest of the process and its workers)."""
    script = (
        "import resource, sys; from marketlake.cli.app import cli; code = cli(sys.argv[1:]); "
        "me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
        "print(max(me, kids) / 1024, file=sys.stderr); sys.exit(code)"
    )
    args = [
        sys.executable, "-c", script, "--store", f"duckdb:///{folder}/ml.duckdb",
        "backtest", "sweep", "-s", "sma_cross", "--symbol", "BTCUSDT", "-t", "1h",
        "--fractional",
        *_grid(combos), "--jobs", "2", "--no-save", "--json",
        "--output", str(folder / f"rows-{combos}{suffix}"),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - start, float(done.stderr.strip().splitlines()[-1])


def _store(folder: Path) -> None:
    """100,000 1h bars of a random walk, imported from a CSV into the store the sweeps read."""
    rng = np.random.default_rng(21)
    n = 100_000
    close = 30_000 * np.exp(np.cumsum(rng.normal(0, 0.006, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    ts = pd.date_range("2012-01-01", periods=n, freq="h", tz="UTC")
    pd.DataFrame(
        {"time": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "open": open_,
         "high": np.maximum(open_, close) * 1.001, "low": np.minimum(open_, close) * 0.999,
         "close": close, "volume": 10.0}
    ).to_csv(folder / "btc.csv", index=False)  # fmt: skip
    subprocess.run(
        [EXE, "--store", f"duckdb:///{folder}/ml.duckdb", "import-csv", str(folder / "btc.csv"),
         "--symbol", "BTCUSDT", "--timeframe", "1h"],
        check=True, capture_output=True,
    )  # fmt: skip


def main() -> None:
    print(f"load average {os.getloadavg()[0]:.2f} (2 cores); 100,000 stored 1h bars of BTCUSDT")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _store(folder)
        for combos in SIZES:
            wall, rss = _run(combos, ".csv", folder)
            line = f"  {combos:>9,} combinations  streamed: peak RSS {rss:7.0f} MB, {wall:6.1f} s"
            if combos <= 32_000:
                wall_m, rss_m = _run(combos, ".parquet", folder)
                line += f"   in memory: peak RSS {rss_m:7.0f} MB, {wall_m:6.1f} s"
            print(line, flush=True)


if __name__ == "__main__":
    main()
