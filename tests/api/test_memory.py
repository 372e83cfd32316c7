"""Bulk responses stream: a real server's peak memory stays flat while 5M bars go out."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from marketlake.store import open_store
from tests.api.server import running

ROWS = 5_000_000


def _fill(uri: str) -> None:
    """5M one-minute bars of one symbol, written in 1M-row batches (fast, deterministic)."""
    import numpy as np
    import pyarrow as pa

    from marketlake.schema import normalize_bars

    with open_store(uri) as store:
        for lo in range(0, ROWS, 1_000_000):
            i = np.arange(lo, min(ROWS, lo + 1_000_000), dtype=np.int64)
            wave = (i % 1000) / 100.0
            store.write_bars(
                normalize_bars(
                    pa.table(
                        {
                            "ts": pa.array(
                                (1420070400 + i * 60) * 1_000_000, pa.timestamp("us", tz="UTC")
                            ),
                            "open": 100 + wave,
                            "high": 101 + wave,
                            "low": 99 + wave,
                            "close": 100.5 + wave,
                            "volume": (1000 + i % 77).astype(float),
                            "trades": i % 50,
                            "vwap": 100.2 + wave,
                        }
                    ),
                    symbol="BTCUSDT",
                    timeframe="1m",
                    source="synthetic",
                )
            )
        store.ensure_instruments(["BTCUSDT"])


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


def _download(url: str, params: dict[str, str]) -> tuple[int, int]:
    """Stream a response to nowhere; return (bytes, lines)."""
    size = lines = 0
    with httpx.stream("GET", url, params=params, timeout=600) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            size += len(chunk)
            lines += chunk.count(b"\n")
    return size, lines


@pytest.mark.slow
def test_streaming_5m_rows_keeps_server_memory_flat(tmp_path: Path) -> None:
    uri = f"duckdb:///{tmp_path}/big.duckdb"
    _fill(uri)
    log = tmp_path / "server.log"
    env = {"MARKETLAKE_API_ACCESS_LOG": "0"}
    with running(["--store", uri, "serve"], log, env=env) as (base, process):
        url = f"{base}/api/v1/bars/BTCUSDT"
        # Warm up on a tenth of the rows in both formats: imports, allocator arenas, Arrow and
        # DuckDB buffer pools reach their working size; what grows after that grows with rows.
        for fmt in ("arrow", "csv"):
            _download(url, {"format": fmt, "end": "2016-01-01"})
        before = _peak_rss_mb(process.pid)
        sizes: dict[str, float] = {}
        for fmt in ("arrow", "csv"):
            began = time.perf_counter()
            size, lines = _download(url, {"format": fmt})
            sizes[fmt] = size / 2**20
            sizes[f"{fmt} seconds"] = time.perf_counter() - began
        peak = _peak_rss_mb(process.pid)
    assert lines == ROWS + 1  # the CSV: a header and every bar
    smallest = min(sizes["arrow"], sizes["csv"])
    assert smallest > 400  # the responses really are large …
    # … and building one in memory would take more than its size; streaming takes a batch
    # (plus DuckDB's buffer pool, which keeps the scanned column blocks: about 150 MB here).
    assert peak - before < smallest / 2, (
        f"peak RSS grew from {before:.0f} to {peak:.0f} MB while streaming {sizes}"
    )
