"""``marketlake ingest synthetic`` as a real subprocess, for the race and fault tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ingest(
    store_uri: str,
    symbols: list[str],
    start: str,
    end: str,
    *extra: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``ingest synthetic SYMBOLS -t 1m`` on ``store_uri`` in batches of 300 rows."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "marketlake", "--store", store_uri, "ingest", "synthetic"),
            *symbols,
            *("-t", "1m", "--start", start, "--end", end, *extra),
        ],
        cwd=ROOT,
        env={**os.environ, "MARKETLAKE_INGEST_BATCH_ROWS": "300", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def marketlake(store_uri: str, *args: str) -> subprocess.Popen[str]:
    """Start ``marketlake --store STORE_URI ARGS``."""
    return subprocess.Popen(
        [sys.executable, "-m", "marketlake", "--store", store_uri, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
