"""Parameter sweeps: a grid of strategy parameters, each combination backtested, on all cores.

Worker processes are started with ``spawn`` (forking a process that already
runs Polars' and DuckDB's thread pools can deadlock) and receive the bars
once; each worker keeps its indicator cache, so a moving average shared by
many combinations is computed once per worker.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from multiprocessing import get_context
from typing import Any

from marketlake.backtest import engine
from marketlake.backtest.data import Bars
from marketlake.backtest.engine import BacktestConfig
from marketlake.backtest.stats import STAT_LABELS
from marketlake.backtest.strategies import Parameter, Scalar, coerce, get_strategy
from marketlake.errors import InputError

MAX_COMBINATIONS = 100_000
Progress = Callable[[int, int], None]


@dataclass
class SweepResult:
    """One row per combination (its parameters, then its statistics), and the skipped ones."""

    rows: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    id: str | None = None


def parse_grid(strategy: str, specs: Sequence[str]) -> dict[str, list[Scalar]]:
    """``["fast=5:50:5", "slow=20,50,100", "k=2"]`` as ``{name: [values...]}``.

    ``a:b:step`` is an inclusive range; ``a,b,c`` a list; one value a constant.
    Names and values are checked against the strategy's typed parameters.
    """
    cls = get_strategy(strategy).__class__
    known = {p.name: p for p in cls.parameters()}
    grid: dict[str, list[Scalar]] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip()
        if not sep or not name or not text.strip():
            raise InputError(
                f"--param {spec!r}: write NAME=VALUE, NAME=START:STOP:STEP or NAME=V1,V2,…",
                param="param",
            )
        if name not in known:
            valid = ", ".join(p.describe() for p in known.values()) or "none"
            raise InputError(
                f"unknown parameter {name!r} for strategy {cls.name}; valid parameters: {valid}",
                param=name,
            )
        grid[name] = _values(known[name], text.strip())
    total = 1
    for values in grid.values():
        total *= len(values)
    if total > MAX_COMBINATIONS:
        raise InputError(
            f"the grid has {total:,} combinations; at most {MAX_COMBINATIONS:,} "
            "are allowed — use coarser steps",
            param="param",
        )
    return grid


def _values(spec: Parameter, text: str) -> list[Scalar]:
    if ":" not in text:
        return [coerce(spec, part) for part in text.split(",")]
    parts = text.split(":")
    if len(parts) != 3:
        raise InputError(f"--param {spec.name}={text}: a range is START:STOP:STEP", param=spec.name)
    try:
        start, stop, step = (Decimal(p.strip()) for p in parts)
    except InvalidOperation:
        raise InputError(
            f"--param {spec.name}={text}: START, STOP and STEP must be numbers", param=spec.name
        ) from None
    if step <= 0 or stop < start:
        raise InputError(
            f"--param {spec.name}={text}: need STEP > 0 and STOP >= START", param=spec.name
        )
    count = int((stop - start) / step) + 1
    if count > MAX_COMBINATIONS:
        raise InputError(
            f"--param {spec.name}={text} has {count:,} values; use a coarser step", param=spec.name
        )
    return [coerce(spec, str(start + i * step)) for i in range(count)]


def combinations(
    strategy: str, grid: Mapping[str, Sequence[Scalar]]
) -> tuple[list[dict[str, Scalar]], list[dict[str, Any]]]:
    """Valid parameter sets of the grid, and the invalid ones with why (e.g. fast >= slow)."""
    names = list(grid)
    valid, skipped = [], []
    for values in itertools.product(*(grid[n] for n in names)):
        params = dict(zip(names, values, strict=True))
        try:
            get_strategy(strategy, params)
        except InputError as exc:
            skipped.append({**params, "reason": exc.message})
            continue
        valid.append(params)
    return valid, skipped


def run_sweep(
    bars: Sequence[Bars],
    strategy: str,
    grid: Mapping[str, Sequence[Scalar]],
    config: BacktestConfig | None = None,
    *,
    jobs: int | None = None,
    progress: Progress | None = None,
) -> SweepResult:
    """Backtest every valid combination of ``grid``; ``jobs`` processes (default: all cores)."""
    get_strategy(strategy)  # an unknown name fails here, not once per combination
    config = config or BacktestConfig()
    todo, skipped = combinations(strategy, grid)
    if not todo:
        raise InputError(
            "no valid parameter combination in the grid"
            + (f" (e.g. {skipped[0]['reason']})" if skipped else ""),
            param="param",
        )
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
    if jobs == 1:
        outcomes = []
        for i, params in enumerate(todo):
            outcomes.append(_one(bars, strategy, params, config))
            if progress:
                progress(i + 1, len(todo))
    else:
        with ProcessPoolExecutor(
            jobs, mp_context=get_context("spawn"), initializer=_init, initargs=(list(bars),)
        ) as pool:
            futures = [pool.submit(_work, strategy, params, config) for params in todo]
            for i, _ in enumerate(as_completed(futures)):
                if progress:
                    progress(i + 1, len(todo))
            outcomes = [future.result() for future in futures]
    rows = [row for row in outcomes if "reason" not in row]
    skipped += [row for row in outcomes if "reason" in row]
    if not rows:
        raise InputError(f"every combination failed, e.g. {skipped[0]['reason']}", param="param")
    return SweepResult(rows, skipped)


def sort_rows(
    rows: list[dict[str, Any]], key: str, *, ascending: bool = False
) -> list[dict[str, Any]]:
    """Rows ordered by statistic ``key`` (best first by default); undefined values last."""
    if key not in STAT_LABELS:
        raise InputError(
            f"cannot sort by {key!r}; use one of: {', '.join(STAT_LABELS)}", param="sort"
        )
    present = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]
    return sorted(present, key=lambda r: r[key], reverse=not ascending) + missing


def _one(
    bars: Sequence[Bars], strategy: str, params: dict[str, Scalar], config: BacktestConfig
) -> dict[str, Any]:
    """The statistics of one combination, or its parameters and why it could not run."""
    try:
        result = engine.run(bars, get_strategy(strategy, params), config)
    except InputError as exc:
        return {**params, "reason": exc.message}
    return {**params, **result.stats}


_WORKER_BARS: list[Bars] = []


def _init(bars: list[Bars]) -> None:
    _WORKER_BARS[:] = bars


def _work(strategy: str, params: dict[str, Scalar], config: BacktestConfig) -> dict[str, Any]:
    return _one(_WORKER_BARS, strategy, params, config)
