"""The Python API: ``lake.bars(symbol, "1m")`` of 500,000 bars, locally and through a server.

Targets: local ≤ 60 ms, through a local server ≤ 2× local (Arrow IPC over HTTP), beside
``pandas.read_parquet`` of the same rows (the file a user would otherwise keep); and
``import marketlake`` ≤ 0.15 s, beside ``python -c pass`` and ``import pandas``; and the
CLI through a server: ``marketlake bars BTCUSDT --tail 20`` run directly on the DuckDB
file (no server) and then on the same file while ``marketlake serve`` holds it (the
command goes through ``POST /api/v1/cli``), target: the server adds ≤ 30 ms.
Each figure is the median of several runs, warm (the first call is not counted); the
three ``lake.bars`` figures are taken in turns, so that all see the same machine load.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

QUICK = os.environ.get("MARKETLAKE_BENCH_QUICK") == "1"
ROWS = 100_000 if QUICK else 500_000


def _interleaved(works: dict[str, Callable[[], Any]], runs: int = 9) -> dict[str, float]:
    """Median seconds of each work, run in turns (after one warm call each), so that all of
    them see the same load on a shared machine."""
    for work in works.values():
        work()
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(runs):
        for name, work in works.items():
            start = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(found) for name, found in times.items()}


def _process(code: str, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cli(uri: str, runs: int = 7) -> float:
    """Median wall time of ``marketlake bars BTCUSDT -t 1m --tail 20`` as a new process."""
    command = [sys.executable, "-m", "marketlake", "--store", uri]
    command += ["bars", "BTCUSDT", "-t", "1m", "--tail", "20"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)  # warm the file cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _seed(uri: str) -> str:
    from marketlake.api.keys import create_key
    from marketlake.schema import BAR_SCHEMA, Instrument
    from marketlake.store import open_store

    rng = np.random.default_rng(3)
    t0 = int(datetime(2023, 1, 1, tzinfo=UTC).timestamp() * 1e6)
    ts = t0 + np.arange(ROWS, dtype=np.int64) * 60_000_000
    close = 30_000 * np.exp(np.cumsum(rng.normal(0, 0.0005, ROWS)))
    table = pa.table(
        {
            "symbol": pa.array(["BTCUSDT"] * ROWS),
            "timeframe": pa.array(["1m"] * ROWS),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "open": close, "high": close * 1.0005, "low": close * 0.9995, "close": close,
            "volume": np.full(ROWS, 3.0), "trades": np.full(ROWS, 10, dtype=np.int64),
            "vwap": close, "source": pa.array(["bench"] * ROWS),
        }
    ).cast(BAR_SCHEMA)  # fmt: skip
    store = open_store(uri)
    try:
        store.add_instrument(Instrument(symbol="BTCUSDT", asset_class="crypto", timezone="UTC"))
        store.write_bars(table)
        return create_key(store, "bench", "read")[1]
    finally:
        store.close()


def main() -> None:
    from tests.api.server import running

    import marketlake as ml

    print(f"load average {os.getloadavg()[0]:.2f} (2 cores); {ROWS:,} 1m bars of one symbol")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        local_uri = f"duckdb:///{folder}/local.duckdb"
        _seed(local_uri)
        served_uri = f"duckdb:///{folder}/served.duckdb"
        key = _seed(served_uri)
        parquet = folder / "btc.parquet"
        log = folder / "serve.log"
        runs = 5 if QUICK else 9
        cli_direct = _cli(served_uri, runs)  # nobody holds the file: the CLI opens it
        load_before = os.getloadavg()[0]
        with (
            ml.connect(local_uri) as lake,
            running(["--store", served_uri, "serve"], log) as (url, _),
            ml.connect(url, api_key=key) as served,
        ):
            frame = lake.bars("BTCUSDT", "1m")
            frame.to_parquet(parquet)
            assert served.bars("BTCUSDT", "1m").equals(frame)
            bars_load = os.getloadavg()[0]
            found = _interleaved(
                {
                    "local": lambda: lake.bars("BTCUSDT", "1m"),
                    "remote": lambda: served.bars("BTCUSDT", "1m"),
                    "parquet": lambda: pd.read_parquet(parquet),
                },
                runs=7 if QUICK else 15,
            )
            bars_load_after = os.getloadavg()[0]
            cli_served = _cli(served_uri, runs)  # the same file, held: through the server
        load_after = os.getloadavg()[0]
    local, remote, pandas_t = found["local"], found["remote"], found["parquet"]
    print(f"  lake.bars local           {local * 1000:7.1f} ms  (target ≤ 60 ms: "
          f"{'met' if local <= 0.060 else 'NOT met'})")  # fmt: skip
    print(f"  lake.bars through server  {remote * 1000:7.1f} ms  {remote / local:.2f}× local "
          f"(target ≤ 2×: {'met' if remote <= 2 * local else 'NOT met'})")  # fmt: skip
    print(f"  pandas.read_parquet       {pandas_t * 1000:7.1f} ms  (local is "
          f"{local / pandas_t:.2f}× it; the three taken in turns, medians; load average "
          f"{bars_load:.2f} before, {bars_load_after:.2f} after)")  # fmt: skip
    added = cli_served - cli_direct
    print(f"  marketlake bars --tail 20 {cli_direct * 1000:7.1f} ms directly, "
          f"{cli_served * 1000:.1f} ms through the server: {added * 1000:+.1f} ms, "
          f"{cli_served / cli_direct:.2f}× (target ≤ +30 ms: "
          f"{'met' if added <= 0.030 else 'NOT met'}); load average {load_before:.2f} "
          f"before, {load_after:.2f} after")  # fmt: skip
    bare = _process("pass")
    ours = _process("import marketlake")
    pandas_import = _process("import pandas")
    print(f"  import marketlake         {ours * 1000:7.1f} ms  (python alone {bare * 1000:.1f} ms, "
          f"import pandas {pandas_import * 1000:.1f} ms; target ≤ 150 ms: "
          f"{'met' if ours <= 0.15 else 'NOT met'})")  # fmt: skip


if __name__ == "__main__":
    main()
