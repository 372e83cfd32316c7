"""Copy instruments, bars and trades from one store to another (``marketlake copy``).

Reads stream in batches (keyset pages of bars, monthly windows of trades) and
every batch is an idempotent write, so an interrupted copy is simply run again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from marketlake.schema import Timeframe, normalize_symbol
from marketlake.store.base import Store, WriteResult, check_range
from marketlake.store.pgschema import next_month

BATCH_ROWS = 500_000


def _month_windows(first: datetime, last: datetime) -> list[tuple[datetime, datetime]]:
    """Calendar-month windows ``[lo, hi)`` covering ``first`` .. ``last`` (inclusive)."""
    lo = first.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    windows = []
    while lo <= last:
        hi_date = next_month(lo.date())
        hi = lo.replace(year=hi_date.year, month=hi_date.month)
        windows.append((lo, hi))
        lo = hi
    return windows


def copy_store(
    source: Store,
    target: Store,
    *,
    symbols: Sequence[str] | None = None,
    timeframe: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, Any]:
    """Copy what ``source`` holds into ``target``; returns counts per kind of record."""
    check_range(start, end)
    wanted = {normalize_symbol(s) for s in symbols} if symbols else None
    tf = str(Timeframe.parse(timeframe)) if timeframe else None
    known = {i.symbol for i in target.list_instruments()}
    instruments = 0
    for instrument in source.list_instruments():
        if instrument.symbol in known or (wanted and instrument.symbol not in wanted):
            continue
        target.add_instrument(instrument, auto=bool(source.auto_registered([instrument.symbol])))
        instruments += 1
    bars = WriteResult()
    for series in source.bar_summary():
        if (wanted and series["symbol"] not in wanted) or (tf and series["timeframe"] != tf):
            continue
        for batch in source.iter_bars(
            series["symbol"], series["timeframe"], start, end, batch_rows=BATCH_ROWS
        ):
            bars += target.write_bars(batch)
    trades = _copy_trades(source, target, wanted, start, end)
    return {"instruments": instruments, "bars": bars.as_dict(), "trades": trades.as_dict()}


def _copy_trades(
    source: Store,
    target: Store,
    wanted: set[str] | None,
    start: datetime | None,
    end: datetime | None,
) -> WriteResult:
    result = WriteResult()
    spans = source.query(
        "SELECT symbol, min(ts) AS first, max(ts) AS last FROM trades GROUP BY symbol "
        "ORDER BY symbol"
    ).to_pylist()
    for span in spans:
        if wanted and span["symbol"] not in wanted:
            continue
        for lo, hi in _month_windows(span["first"], span["last"]):
            lo = max(lo, start) if start else lo
            hi = min(hi, end) if end else hi
            if lo >= hi:
                continue
            table = source.read_trades(span["symbol"], lo, hi)
            if table.num_rows:
                result += target.write_trades(table)
    return result
