"""Parameter sweeps: a grid of strategy parameters, each combination backtested, on all cores.

Worker processes are started with ``spawn`` (forking a process that already
runs Polars' and DuckDB's thread pools can deadlock) and receive the bars
once; each worker keeps its indicator cache, so a moving average shared by
many combinations is computed once per worker.

:func:`run_sweep` keeps every row in memory (up to :data:`MAX_COMBINATIONS`).
:func:`stream_sweep` writes each row to a CSV file as its chunk finishes and keeps
only the best rows in memory, so memory stays flat in the number of combinations
(up to :data:`MAX_STREAMED`); the combinations are generated lazily, at most a
few chunks are in flight, and a stopped sweep resumes from the rows in its file
(each row carries its ``combo`` number in the grid's order).
"""

from __future__ import annotations

import csv
import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from marketlake.backtest import engine
from marketlake.backtest.data import Bars
from marketlake.backtest.engine import BacktestConfig
from marketlake.backtest.stats import STAT_LABELS
from marketlake.backtest.strategies import Parameter, Scalar, coerce, get_strategy
from marketlake.errors import InputError

MAX_COMBINATIONS = 100_000
MAX_STREAMED = 50_000_000
CHUNK = 64
Progress = Callable[[int, int], None]


@dataclass
class SweepResult:
    """One row per combination (its parameters, then its statistics), and the skipped ones."""

    rows: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    id: str | None = None


def parse_grid(
    strategy: str, specs: Sequence[str], limit: int | None = None
) -> dict[str, list[Scalar]]:
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
        grid[name] = _values(known[name], text.strip(), limit or MAX_COMBINATIONS)
    total = 1
    for values in grid.values():
        total *= len(values)
    limit = limit or MAX_COMBINATIONS
    if total > limit:
        hint = (
            f" (write them to a file with --output FILE.csv to allow up to {MAX_STREAMED:,})"
            if limit < MAX_STREAMED
            else ""
        )
        raise InputError(
            f"the grid has {total:,} combinations; at most {limit:,} "
            f"are allowed — use coarser steps{hint}",
            param="param",
        )
    return grid


def _values(spec: Parameter, text: str, limit: int) -> list[Scalar]:
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
    if count > limit:
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
            jobs,
            mp_context=get_context("spawn"),
            initializer=_init,
            initargs=(list(bars), os.getpid()),
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


def _init(bars: list[Bars], parent: int) -> None:
    _WORKER_BARS[:] = bars
    exit_with_parent(parent)


def exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """End this pool worker when the process that started it is gone.

    A sweep killed with SIGKILL cannot stop its workers, and they would wait on the
    task queue for ever (its write end stays open in the sibling workers)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _work(strategy: str, params: dict[str, Scalar], config: BacktestConfig) -> dict[str, Any]:
    return _one(_WORKER_BARS, strategy, params, config)


# -- streamed sweeps ---------------------------------------------------------------------


@dataclass
class StreamedSweep:
    """What a streamed sweep leaves in memory: the best rows and counts."""

    top: list[dict[str, Any]]
    total: int
    done: int
    resumed: int
    skipped: int
    first_problem: str | None
    path: Path
    id: str | None = None


@dataclass
class _Tally:
    done: int
    skipped: int = 0
    problem: str | None = None


def grid_size(grid: Mapping[str, Sequence[Scalar]]) -> int:
    total = 1
    for values in grid.values():
        total *= len(values)
    return total


def _combo(grid: Mapping[str, Sequence[Scalar]], index: int) -> dict[str, Scalar]:
    """The ``index``-th combination in ``itertools.product`` order, without building the rest."""
    out: dict[str, Scalar] = {}
    for name in reversed(list(grid)):
        values = grid[name]
        index, i = divmod(index, len(values))
        out[name] = values[i]
    return dict(reversed(list(out.items())))


def _done_combos(path: Path, total: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Which combinations a previous run of this sweep wrote to ``path`` (a cut last line,
    from a run that was killed mid-write, is dropped from the file first)."""
    done = np.zeros(total, dtype=bool)
    if not path.exists() or path.stat().st_size == 0:
        return done
    with path.open("rb+") as handle:
        data = handle.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            handle.truncate(end)
    if end == 0:
        return done
    import pyarrow.csv as pacsv

    try:
        table = pacsv.read_csv(
            path, convert_options=pacsv.ConvertOptions(include_columns=["combo"])
        )
    except (pa.ArrowInvalid, KeyError) as exc:
        raise InputError(
            f"--resume: {path} is not the output of a sweep ({exc}); give a new --output",
            param="output",
        ) from None
    combos = table.column("combo").to_numpy()
    if len(combos) and (combos.max() >= total or combos.min() < 0):
        raise InputError(
            f"--resume: {path} holds combinations of another grid; give a new --output",
            param="output",
        )
    done[combos] = True
    return done


def stream_sweep(
    bars: Sequence[Bars],
    strategy: str,
    grid: Mapping[str, Sequence[Scalar]],
    config: BacktestConfig | None = None,
    *,
    output: Path,
    sort: str = "sharpe",
    keep: int = 1000,
    resume: bool = False,
    jobs: int | None = None,
    progress: Progress | None = None,
) -> StreamedSweep:
    """Backtest every combination of ``grid``, writing each row to the CSV ``output`` as it
    finishes; memory holds the ``keep`` best rows by ``sort`` and a bitmap of done combos."""
    get_strategy(strategy)
    sort_rows([], sort)
    config = config or BacktestConfig()
    if output.suffix.lower() != ".csv":
        raise InputError(
            f"--output {output}: a streamed sweep writes .csv (rows are appended as they "
            "finish, so it can resume)",
            param="output",
        )
    if not output.parent.is_dir():
        raise InputError(f"folder {output.parent} does not exist; create it first", param="output")
    if output.exists() and not resume:
        raise InputError(
            f"{output} exists; add --resume to continue that sweep or choose another file",
            param="output",
        )
    total = grid_size(grid)
    done = _done_combos(output, total) if resume else np.zeros(total, dtype=bool)
    resumed = int(done.sum())
    names = ["combo", *grid, *STAT_LABELS]
    todo = (i for i in range(total) if not done[i])
    best: list[tuple[float, int, dict[str, Any]]] = []
    state = _Tally(resumed)
    fresh = not output.exists() or output.stat().st_size == 0

    def take(rows: list[dict[str, Any]], writer: Any, handle: Any) -> None:
        for row in rows:
            if "reason" in row:
                state.skipped += 1
                state.problem = state.problem or row["reason"]
                continue
            writer.writerow([_csv_value(row.get(k)) for k in names])
            value = row.get(sort)
            if value is not None:
                item = (float(value), int(row["combo"]), row)
                if len(best) < keep:
                    heapq.heappush(best, item)
                elif item[0] > best[0][0]:
                    heapq.heapreplace(best, item)
        handle.flush()
        state.done += len(rows)
        if progress:
            progress(state.done, total)

    with output.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if fresh:
            writer.writerow(names)
        workers = max(1, min(jobs or os.cpu_count() or 1, total))
        chunks = _chunks(todo, grid)
        if workers == 1:
            for chunk in chunks:
                take([_one_row(bars, strategy, i, p, config) for i, p in chunk], writer, handle)
        else:
            with ProcessPoolExecutor(
                workers,
                mp_context=get_context("spawn"),
                initializer=_init,
                initargs=(list(bars), os.getpid()),
            ) as pool:
                running: set[Future[list[dict[str, Any]]]] = set()
                for chunk in chunks:
                    running.add(pool.submit(_work_chunk, strategy, chunk, config))
                    if len(running) >= 2 * workers:
                        finished, running = wait(running, return_when=FIRST_COMPLETED)
                        for future in finished:
                            take(future.result(), writer, handle)
                for future in as_completed(running):
                    take(future.result(), writer, handle)
    top = [row for _, _, row in sorted(best, key=lambda item: (-item[0], item[1]))]
    return StreamedSweep(
        top,
        total,
        state.done,
        resumed,
        state.skipped,
        state.problem,
        output,
    )


def _chunks(
    todo: Iterator[int], grid: Mapping[str, Sequence[Scalar]]
) -> Iterator[list[tuple[int, dict[str, Scalar]]]]:
    while True:
        chunk = [(i, _combo(grid, i)) for i in itertools.islice(todo, CHUNK)]
        if not chunk:
            return
        yield chunk


def _one_row(
    bars: Sequence[Bars],
    strategy: str,
    index: int,
    params: dict[str, Scalar],
    config: BacktestConfig,
) -> dict[str, Any]:
    return {"combo": index, **_one(bars, strategy, params, config)}


def _work_chunk(
    strategy: str, chunk: list[tuple[int, dict[str, Scalar]]], config: BacktestConfig
) -> list[dict[str, Any]]:
    return [_one_row(_WORKER_BARS, strategy, i, p, config) for i, p in chunk]


def _csv_value(value: Any) -> Any:
    return "" if value is None else value
