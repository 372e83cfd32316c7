"""Run the benchmarks: ``python -m bench [--quick] [NAME ...]`` (default: every
``bench/bench_*.py``).

``--quick`` sets ``MARKETLAKE_BENCH_QUICK=1``; benchmarks that honour it use small sizes.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path


def run(names: list[str]) -> int:
    """Call ``main()`` of each benchmark module whose name contains one of ``names``."""
    if "--quick" in names:
        os.environ["MARKETLAKE_BENCH_QUICK"] = "1"
    names = [n for n in names if not n.startswith("-")]
    folder = Path(__file__).resolve().parent
    modules = sorted(
        m.name for m in pkgutil.iter_modules([str(folder)]) if m.name.startswith("bench_")
    )
    chosen = [m for m in modules if not names or any(n in m for n in names)]
    for name in chosen:
        print(f"== {name}", flush=True)
        importlib.import_module(f"bench.{name}").main()
    return 0 if chosen else 1


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
