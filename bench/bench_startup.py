"""Start-up cost of the ``marketlake`` command against ``python -c "import typer"``.

The floor a Typer CLI can reach is the interpreter plus Typer; the targets are
``marketlake --help`` ≤ 0.3 s and every command's fixed cost (the time above the
floor: its ``--help``, ``keys create`` on an empty store, and the read commands on a
tiny store, which open it) ≤ 0.5 s. Each figure is the median of several cold
processes; the machine load is printed beside the figures, and so is the CPU time
of each process (user + system), which a busy machine disturbs less than the wall
time: the verdict uses the wall time on a quiet machine and the CPU time when the
load average exceeds the number of cores. Each command's runs alternate with runs of
the floor, so that both see the same load.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

QUICK = os.environ.get("MARKETLAKE_BENCH_QUICK") == "1"
RUNS = 3 if QUICK else 7
CLI = [sys.executable, "-m", "marketlake"]


def _timed(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one cold process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run(args, env=env, capture_output=True, check=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def _cases() -> dict[str, tuple[list[str], float]]:
    """Name → (arguments of one run, target of the fixed cost in seconds)."""
    return {
        "marketlake --help": (["--help"], 0.3),
        "marketlake bars --help": (["bars", "--help"], 0.5),
        "marketlake serve --help": (["serve", "--help"], 0.5),
        "marketlake keys create": (["keys", "create", "{i}", "--json"], 0.5),
        "marketlake keys list": (["keys", "list", "--json"], 0.5),
        "marketlake instruments list": (["instruments", "list", "--json"], 0.5),
        "marketlake bars AAPL --tail 5": (["bars", "AAPL", "-t", "1d", "--tail", "5"], 0.5),
        "marketlake doctor": (["doctor"], 0.5),
        "marketlake jobs list": (["jobs", "list"], 0.5),
    }


def main() -> None:
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    busy = load[0] > cores
    floor_args = [sys.executable, "-c", "import typer"]
    with tempfile.TemporaryDirectory() as folder:
        env = os.environ | {"MARKETLAKE_STORE": f"duckdb:///{folder}/bench.duckdb"}
        # the tiny store the read commands open (untimed): two months of synthetic daily bars
        period = ["--start", "2024-01-01", "--end", "2024-03-01"]
        subprocess.run(
            [*CLI, "ingest", "synthetic", "AAPL", "-t", "1d", *period],
            env=env,
            capture_output=True,
            check=True,
        )
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {cores} cores")
        print(f"verdict on {'CPU time (busy machine)' if busy else 'wall time'}")
        print(
            'each command alternates with the floor, python -c "import typer"; '
            "MarketLake's own = command - floor (medians of the same runs)"
        )
        floors: list[tuple[float, float]] = []
        for name, (args, target) in _cases().items():
            runs, floor_runs = [], []
            for i in range(RUNS):
                floor_runs.append(_timed(floor_args))
                runs.append(_timed([*CLI, *(a.format(i=f"bench{i}") for a in args)], env))
            floors += floor_runs
            (wall, cpu), (floor_wall, floor_cpu) = _median(runs), _median(floor_runs)
            fixed_wall, fixed_cpu = wall - floor_wall, cpu - floor_cpu
            verdict = "ok" if (fixed_cpu if busy else fixed_wall) <= target else "OVER"
            print(
                f"{name:<32} {wall:6.3f} s wall {cpu:6.3f} s CPU  {wall / floor_wall:4.1f}x typer; "
                f"MarketLake's own {fixed_wall:6.3f} s wall {fixed_cpu:6.3f} s CPU, "
                f"target {target} s: {verdict}"
            )
        floor_wall, floor_cpu = _median(floors)
        floor_name = 'python -c "import typer"'
        print(f"{floor_name:<32} {floor_wall:6.3f} s wall {floor_cpu:6.3f} s CPU   (the floor)")
        print(f"load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
