"""What the row-throughput benchmarks share: median timing and the printed comparison."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def median_time(
    run: Callable[[], Any], repeat: int, prepare: Callable[[], Any] | None = None
) -> float:
    """Median wall time of ``run``; ``prepare`` (untimed) runs before each repetition."""
    times = []
    for _ in range(repeat):
        if prepare is not None:
            prepare()
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def rate(rows: int, seconds: float) -> str:
    return f"{seconds:8.3f} s {rows / seconds / 1e6:7.2f} M rows/s"


def report(title: str, rows: int, ours: float, others: dict[str, float], target: str = "") -> None:
    """MarketLake's time and rate, then each alternative's with its ratio to MarketLake."""
    print(title)
    print(f"  {'MarketLake':<26}{rate(rows, ours)}  {target}".rstrip())
    for name, seconds in others.items():
        print(f"  {name:<26}{rate(rows, seconds)}  ratio {seconds / ours:5.1f}x")
    sys.stdout.flush()
