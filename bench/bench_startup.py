"""Start-up cost of the ``marketlake`` command against ``python -c "import typer"``.

The floor a Typer CLI can reach is the interpreter plus Typer; the targets are
``marketlake --help`` ≤ 0.3 s and every command's fixed cost (its ``--help``, and
``keys create`` on an empty store, which opens it) ≤ 0.5 s. Each is the median of
several cold processes; the machine load is printed beside the figures.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

QUICK = os.environ.get("MARKETLAKE_BENCH_QUICK") == "1"
RUNS = 3 if QUICK else 7
CLI = [sys.executable, "-m", "marketlake"]


def _median_s(args: list[str], env: dict[str, str] | None = None) -> float:
    times = []
    for _ in range(RUNS):
        began = time.perf_counter()
        subprocess.run(args, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    load = os.getloadavg()
    floor = _median_s([sys.executable, "-c", "import typer"])
    with tempfile.TemporaryDirectory() as folder:
        env = os.environ | {"MARKETLAKE_STORE": f"duckdb:///{folder}/bench.duckdb"}
        cases = {
            "marketlake --help": ([*CLI, "--help"], 0.3),
            "marketlake bars --help": ([*CLI, "bars", "--help"], 0.5),
            "marketlake serve --help": ([*CLI, "serve", "--help"], 0.5),
            "marketlake keys create": ([*CLI, "keys", "create", "bench", "--json"], 0.5),
        }
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cores")
        floor_name = 'python -c "import typer"'
        print(f"{floor_name:<28} {floor:7.3f} s   (the floor)")
        for name, (args, target) in cases.items():
            if name == "marketlake keys create":  # a new name each run: the store keeps keys
                seconds = statistics.median(
                    _timed([*args[:-2], f"bench{i}", "--json"], env) for i in range(RUNS)
                )
            else:
                seconds = _median_s(args, env)
            fixed = seconds - floor
            verdict = "ok" if fixed <= target else "OVER"
            print(
                f"{name:<28} {seconds:7.3f} s   {seconds / floor:4.1f}x typer; "
                f"MarketLake's own {fixed:6.3f} s, target {target} s: {verdict}"
            )


def _timed(args: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(args, env=env, capture_output=True, check=True)
    return time.perf_counter() - began


if __name__ == "__main__":
    main()
