"""A writer process for the concurrency tests.

``python -m tests.store.pg_writer URI FROM TO STEP GO``.

Waits until the file GO exists, then writes 1-minute bars of two symbols for
[FROM, TO) in batches of STEP minutes and prints the summed WriteResult as JSON.
Every bar's values are a function of its symbol and minute, so two writers
agree on their overlap. Only the store is imported, to start fast.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from marketlake.schema import BAR_SCHEMA
from marketlake.store import WriteResult, open_store


def bars(symbol: str, lo: datetime, hi: datetime) -> pa.Table:
    """Deterministic 1-minute bars of ``symbol`` in [lo, hi)."""
    first = int(lo.timestamp()) // 60
    minutes = np.arange(first, int(hi.timestamp()) // 60, dtype=np.int64)
    price = 100.0 + (minutes % 1000) * 0.01 + len(symbol)
    n = len(minutes)
    return pa.table(
        {
            "symbol": [symbol] * n,
            "timeframe": ["1m"] * n,
            "ts": pa.array(minutes * 60_000_000, pa.timestamp("us", tz="UTC")),
            "open": price,
            "high": price + 0.5,
            "low": price - 0.5,
            "close": price + 0.1,
            "volume": (minutes % 7).astype(np.float64),
            "trades": minutes % 11,
            "vwap": price + 0.05,
            "source": ["test"] * n,
        },
        schema=BAR_SCHEMA,
    )


def main(argv: list[str]) -> int:
    uri, first, last, step, go = argv
    lo = datetime.fromisoformat(first).replace(tzinfo=UTC)
    hi = datetime.fromisoformat(last).replace(tzinfo=UTC)
    table = pa.concat_tables([bars("BTCUSDT", lo, hi), bars("ETHUSDT", lo, hi)])
    store = open_store(uri)
    while not Path(go).exists():
        time.sleep(0.01)
    total = WriteResult()
    cursor = lo
    ts = table.column("ts")
    import pyarrow.compute as pc

    while cursor < hi:
        upper = min(hi, cursor + timedelta(minutes=int(step)))
        mask = pc.and_(pc.greater_equal(ts, cursor), pc.less(ts, upper))
        total += store.write_bars(table.filter(mask))
        cursor = upper
    store.close()
    sys.stdout.write(json.dumps(total.as_dict()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
