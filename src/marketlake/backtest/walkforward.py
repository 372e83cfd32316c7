"""Walk-forward optimisation: choose parameters in-sample, trade them out-of-sample.

The bars are cut into ``windows`` consecutive out-of-sample (OOS) segments of
equal length L at the end of the data, each preceded by an in-sample (IS)
segment of ``train_ratio`` × L bars: *rolling* windows keep that length (the IS
slides forward), *anchored* ones start at the first bar and grow::

    rolling   [IS 0      ][OOS 0]
                    [IS 1      ][OOS 1]
                          [IS 2      ][OOS 2]
    anchored  [IS 0      ][OOS 0]
              [IS 1            ][OOS 1]

In each window a sweep over the grid runs on the IS bars only and the best
combination by ``objective`` (e.g. ``sharpe``) is then traded on the OOS bars.
The strategy sees the IS bars before the OOS segment as history for its
indicators (a 50-bar average is warm on the first OOS bar), but only OOS bars
are traded. Each OOS segment starts with the equity the previous one ended
with, so the OOS curves stitch into one.

Nothing of an OOS segment is visible to the choice made for it: the sweep is
given the IS bars alone (``tests/backtest/test_walkforward.py`` plants a
parameter that is only good out of sample and checks it is never chosen).
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from marketlake.backtest import engine
from marketlake.backtest.data import Bars, FloatArray, IntArray
from marketlake.backtest.engine import BacktestConfig
from marketlake.backtest.stats import US_PER_DAY, US_PER_YEAR, iso_us, risk_stats
from marketlake.backtest.strategies import Scalar, Strategy, get_strategy
from marketlake.backtest.sweep import Progress, _one, combinations, exit_with_parent, sort_rows
from marketlake.errors import InputError

Anchor = Literal["rolling", "anchored"]


@dataclass(frozen=True)
class Window:
    """One walk-forward step: bar index ranges (half-open) into the common time line."""

    index: int
    is_start: int
    is_end: int
    oos_end: int


@dataclass
class WindowResult:
    window: Window
    params: dict[str, Scalar]
    in_sample: dict[str, Any]
    out_of_sample: dict[str, Any]
    start: str
    split: str
    end: str


@dataclass
class WalkForwardResult:
    """The stitched out-of-sample equity, the parameters chosen per window and their stats."""

    strategy: str
    objective: str
    windows: list[WindowResult]
    ts: IntArray
    equity: FloatArray
    stats: dict[str, Any]
    config: BacktestConfig
    timeframe: str = ""
    id: str | None = field(default=None)

    def windows_table(self) -> pa.Table:
        """One row per window: its dates, the chosen parameters, IS and OOS statistics."""
        rows = []
        for w in self.windows:
            row: dict[str, Any] = {
                "window": w.window.index,
                "in_sample_start": w.start,
                "out_of_sample_start": w.split,
                "out_of_sample_end": w.end,
            }
            row.update({f"param_{k}": v for k, v in w.params.items()})
            for key in (self.objective, "total_return_pct", "max_drawdown_pct", "trades"):
                row[f"is_{key}"] = w.in_sample.get(key)
                row[f"oos_{key}"] = w.out_of_sample.get(key)
            rows.append(row)
        return pa.Table.from_pylist(rows)

    def stability(self) -> list[dict[str, Any]]:
        """Per parameter: the values chosen, the most common one and how often it won."""
        out = []
        names = list(self.windows[0].params) if self.windows else []
        for name in names:
            chosen = [w.params[name] for w in self.windows]
            value, count = Counter(chosen).most_common(1)[0]
            numbers = [float(v) for v in chosen if isinstance(v, int | float)]
            out.append(
                {
                    "parameter": name,
                    "chosen": chosen,
                    "distinct": len(set(chosen)),
                    "most_common": value,
                    "share_pct": count / len(chosen) * 100,
                    "spread": (max(numbers) - min(numbers)) if numbers else None,
                }
            )
        return out

    def equity_table(self) -> pa.Table:
        peak = np.maximum.accumulate(self.equity)
        return pa.table(
            {
                "ts": pa.array(self.ts, pa.timestamp("us", tz="UTC")),
                "equity": self.equity,
                "drawdown": self.equity / peak - 1.0,
            }
        )


def make_windows(bars: int, windows: int, train_ratio: float, anchor: Anchor) -> list[Window]:
    """The IS/OOS index ranges of ``windows`` steps over ``bars`` bars."""
    if windows < 1:
        raise InputError("walk-forward needs at least 1 window", param="windows")
    if not train_ratio > 0:
        raise InputError("--train-ratio must be positive (3 = IS three times the OOS)")
    if anchor not in ("rolling", "anchored"):
        raise InputError("anchor must be rolling or anchored", param="anchor")
    length = int(bars // (windows + train_ratio))
    train = round(train_ratio * length)
    if length < 2 or train < 2:
        raise InputError(
            f"{bars} bars are too few for {windows} windows with train ratio {train_ratio}; "
            "use fewer windows, a smaller ratio, a longer range or a smaller timeframe",
            param="windows",
        )
    first_oos = bars - windows * length
    out = []
    for i in range(windows):
        split = first_oos + i * length
        end = bars if i == windows - 1 else split + length
        start = 0 if anchor == "anchored" else split - train
        out.append(Window(i, start, split, end))
    return out


def _timeline(bars: Sequence[Bars]) -> IntArray:
    return np.unique(np.concatenate([b.ts for b in bars]))


def _slice(one: Bars, lo: int, hi: int) -> Bars:
    """The bars of ``one`` with ts in [lo, hi)."""
    a, b = np.searchsorted(one.ts, [lo, hi])
    return Bars(
        one.symbol,
        one.ts[a:b],
        one.open[a:b],
        one.high[a:b],
        one.low[a:b],
        one.close[a:b],
        one.volume[a:b],
    )


@dataclass(frozen=True)
class _Warm(Strategy):
    """Trades ``inner`` on the given bars with its indicators warmed on earlier bars."""

    name: ClassVar[str] = "warm"
    inner: Strategy | None = None
    history: Mapping[str, Bars] = field(default_factory=dict)

    def signals(self, bars: Bars) -> FloatArray:
        assert self.inner is not None
        full = self.history[bars.symbol]
        signals = self.inner.signals(full)
        return np.asarray(signals[len(full) - len(bars) :], dtype=np.float64)

    def min_bars(self) -> int:
        return 1

    def label(self) -> str:
        return self.inner.label() if self.inner else self.name


def walk_forward(
    bars: Sequence[Bars],
    strategy: str,
    grid: Mapping[str, Sequence[Scalar]],
    config: BacktestConfig | None = None,
    *,
    windows: int = 5,
    train_ratio: float = 3.0,
    anchor: Anchor = "rolling",
    objective: str = "sharpe",
    jobs: int | None = None,
    progress: Progress | None = None,
    timeframe: str = "",
) -> WalkForwardResult:
    """Run a walk-forward optimisation of ``strategy`` over ``grid`` (see the module doc)."""
    config = config or BacktestConfig()
    get_strategy(strategy)
    sort_rows([], objective)  # an unknown objective fails before any work
    if not bars:
        raise InputError("no bars to backtest; check the symbols, timeframe and range")
    line = _timeline(bars)
    steps = make_windows(len(line), windows, train_ratio, anchor)
    end_us = int(line[-1]) + 1
    cash = config.cash
    todo, _ = combinations(strategy, grid)
    if not todo:
        raise InputError("no valid parameter combination in the grid", param="param")
    workers = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1:
            # one pool for every window: the workers get the bars once and slice them
            pool = stack.enter_context(
                ProcessPoolExecutor(
                    workers,
                    mp_context=get_context("spawn"),
                    initializer=_init_bars,
                    initargs=(list(bars), os.getpid()),
                )
            )
        results, curves = _windows(
            pool, bars, steps, line, end_us, strategy, grid, todo, config, cash, progress,
            timeframe, objective,
        )  # fmt: skip
    ts = np.concatenate([c[0] for c in curves])
    equity = np.concatenate([c[1] for c in curves])
    stats = _stitched_stats(ts, equity, config.cash, results)
    return WalkForwardResult(strategy, objective, results, ts, equity, stats, config, timeframe)


def _windows(
    pool: ProcessPoolExecutor | None,
    bars: Sequence[Bars],
    steps: list[Window],
    line: IntArray,
    end_us: int,
    strategy: str,
    grid: Mapping[str, Sequence[Scalar]],
    todo: list[dict[str, Scalar]],
    config: BacktestConfig,
    cash: float,
    progress: Progress | None,
    timeframe: str,
    objective: str,
) -> tuple[list[WindowResult], list[tuple[IntArray, FloatArray]]]:
    results: list[WindowResult] = []
    curves: list[tuple[IntArray, FloatArray]] = []
    total = len(steps)
    for done, step in enumerate(steps):
        lo, split = int(line[step.is_start]), int(line[step.is_end])
        hi = int(line[step.oos_end]) if step.oos_end < len(line) else end_us
        in_sample = [_slice(b, lo, split) for b in bars]
        in_sample = [b for b in in_sample if len(b)]
        if not in_sample:
            raise InputError(f"window {step.index} has no in-sample bars", param="windows")
        rows = _sweep(pool, bars, in_sample, (lo, split), strategy, todo, config)
        if not rows:
            raise InputError(
                f"window {step.index}: every combination failed in-sample", param="param"
            )
        best = sort_rows(rows, objective)[0]
        params = {k: best[k] for k in grid}
        chosen = get_strategy(strategy, params)
        history = {b.symbol: _slice(b, lo, hi) for b in bars}
        oos_bars = [_slice(b, split, hi) for b in bars]
        oos_bars = [b for b in oos_bars if len(b)]
        warm = _Warm(inner=chosen, history=history)
        oos = engine.run(oos_bars, warm, replace(config, cash=cash), timeframe)
        cash = float(oos.equity[-1])
        curves.append((oos.ts, oos.equity))
        results.append(
            WindowResult(
                step,
                params,
                {k: v for k, v in best.items() if k not in grid},
                oos.stats,
                iso_us(lo),
                iso_us(split),
                iso_us(int(oos.ts[-1])),
            )
        )
        if progress:
            progress(done + 1, total)
    return results, curves


_BARS: list[Bars] = []
_SLICES: dict[tuple[int, int], list[Bars]] = {}


def _init_bars(bars: list[Bars], parent: int) -> None:
    _BARS[:] = bars
    exit_with_parent(parent)


def _in_sample(span: tuple[int, int]) -> list[Bars]:
    """The in-sample slice of the worker's bars (kept while its window is being swept, so
    each indicator is computed once per window and worker)."""
    if span not in _SLICES:
        _SLICES.clear()
        sliced = [_slice(b, *span) for b in _BARS]
        _SLICES[span] = [b for b in sliced if len(b)]
    return _SLICES[span]


def _sweep_part(
    span: tuple[int, int], strategy: str, part: list[dict[str, Scalar]], config: BacktestConfig
) -> list[dict[str, Any]]:
    bars = _in_sample(span)
    return [_one(bars, strategy, params, config) for params in part]


def _sweep(
    pool: ProcessPoolExecutor | None,
    bars: Sequence[Bars],
    in_sample: list[Bars],
    span: tuple[int, int],
    strategy: str,
    todo: list[dict[str, Scalar]],
    config: BacktestConfig,
) -> list[dict[str, Any]]:
    """Every combination of ``todo`` on the in-sample bars; the rows that ran."""
    if pool is None:
        rows = [_one(in_sample, strategy, params, config) for params in todo]
    else:
        size = max(1, len(todo) // 16)
        parts = [todo[i : i + size] for i in range(0, len(todo), size)]
        futures = [pool.submit(_sweep_part, span, strategy, part, config) for part in parts]
        rows = [row for future in futures for row in future.result()]
    return [row for row in rows if "reason" not in row]


def _stitched_stats(
    ts: IntArray, equity: FloatArray, cash: float, windows: list[WindowResult]
) -> dict[str, Any]:
    years = (float(ts[-1]) - float(ts[0])) / US_PER_YEAR
    out: dict[str, Any] = {
        "start": iso_us(ts[0]),
        "end": iso_us(ts[-1]),
        "duration_days": (float(ts[-1]) - float(ts[0])) / US_PER_DAY,
        "bars": len(ts),
        "windows": len(windows),
        "initial_cash": cash,
        "final_equity": float(equity[-1]),
        "total_return_pct": (float(equity[-1]) / cash - 1) * 100,
        "trades": sum(int(w.out_of_sample.get("trades") or 0) for w in windows),
    }
    out.update(risk_stats(equity, cash, years, ts))
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in out.items()}
