"""Bars built from trades as they arrive, one open bar per symbol.

A bar closes when a trade of a later bucket arrives (event time, so replays
and tests are deterministic); a partial bar is never written. A symbol's
trades arrive in time order (one feed connection, one bus shard, one worker),
so a trade older than the newest one taken, or as old and with an id already
taken, was seen before (a redelivered bus entry) and is skipped: this needs
no memory of ids beyond the newest timestamp. When the exchange's own final
bar for a bucket arrives (a closed kline, or REST backfill), the trade-built
bar of that bucket is dropped: the exchange's bar is the one stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import pyarrow as pa

from marketlake.schema import BAR_SCHEMA, Timeframe, from_epoch_us
from marketlake.stream.analytics import Array, running_sum


@dataclass(slots=True)
class OpenBar:
    """The bar being built for one symbol."""

    symbol: str
    source: str = "trades"
    start: int = -1
    end: int = -1
    open: float = 0.0
    high: float = 0.0
    low: float = 0.0
    close: float = 0.0
    volume: float = 0.0
    pv: float = 0.0
    count: int = 0
    final_until: int = -1
    skipped: int = 0
    last_ts: int = -1
    last_ids: set[str] = field(default_factory=set)

    def as_dict(self, timeframe: str) -> dict[str, Any] | None:
        """The bar so far (None before its first trade)."""
        if not self.count:
            return None
        return {
            "symbol": self.symbol,
            "timeframe": timeframe,
            "ts": from_epoch_us(self.start),
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
            "trades": self.count,
            "vwap": self.pv / self.volume if self.volume else self.close,
        }


class BarBuilder:
    """Builds ``timeframe`` bars of every symbol from its trades."""

    def __init__(self, timeframe: str = "1m") -> None:
        self.timeframe = str(Timeframe.parse(timeframe))
        self._step = Timeframe.parse(timeframe).micros
        self._open: dict[str, OpenBar] = {}
        self._closed: dict[str, list[Any]] = {name: [] for name in BAR_SCHEMA.names}

    def bar(self, symbol: str) -> OpenBar:
        """The open bar of ``symbol`` (created empty on first use)."""
        found = self._open.get(symbol)
        if found is None:
            found = self._open[symbol] = OpenBar(symbol)
        return found

    @property
    def step_us(self) -> int:
        return self._step

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._open

    def symbols(self) -> list[str]:
        return list(self._open)

    def drop(self, symbol: str) -> None:
        self._open.pop(symbol, None)

    def add_many(
        self, bar: OpenBar, ts: Array, price: Array, size: Array, ids: pa.ChunkedArray | pa.Array
    ) -> Array | None:
        """Add a batch of trades; a mask of the ones taken, or None when all were.

        The batch is cut where the bucket changes and each piece is aggregated
        with vector operations; ids are only read for trades as old as the
        newest one taken. A batch out of time order goes through :meth:`add`
        trade by trade.
        """
        if len(ts) > 1 and bool((ts[1:] < ts[:-1]).any()):
            return np.fromiter(
                (
                    self.add(bar, int(t), float(p), float(q), str(i))
                    for t, p, q, i in zip(ts, price, size, ids.to_pylist(), strict=True)
                ),
                bool,
                len(ts),
            )
        seen = ts < bar.last_ts
        tied = np.flatnonzero(ts == bar.last_ts)
        if len(tied):
            seen[tied] = [i in bar.last_ids for i in ids.take(pa.array(tied)).to_pylist()]
        keep: Array | None = None
        if seen.any():
            bar.skipped += int(seen.sum())
            keep = ~seen
            ts, price, size = ts[keep], price[keep], size[keep]
            ids = ids.filter(pa.array(keep))
        if not len(ts):
            return keep
        self._remember(bar, ts, ids)
        start = ts - ts % self._step
        cuts = np.flatnonzero(start[1:] != start[:-1]) + 1
        for i, j in pairwise([0, *cuts.tolist(), len(ts)]):
            if start[i] >= bar.end:
                self._roll(bar, int(start[i]))
            self._aggregate(bar, ts[i:j], price[i:j], size[i:j])
        return keep

    @staticmethod
    def _remember(bar: OpenBar, ts: Array, ids: pa.ChunkedArray | pa.Array) -> None:
        """Keep the newest timestamp taken and the ids taken at it."""
        newest = int(ts[-1])
        at_newest = ids.filter(pa.array(ts == newest)).to_pylist()
        if newest != bar.last_ts:
            bar.last_ts, bar.last_ids = newest, set()
        bar.last_ids.update(at_newest)

    def _aggregate(self, bar: OpenBar, ts: Array, price: Array, size: Array) -> None:
        if bar.final_until > ts[0]:
            after = ts >= bar.final_until
            price, size = price[after], size[after]
        if not len(price):
            return
        high, low = float(price.max()), float(price.min())
        if bar.count:
            bar.high, bar.low = max(bar.high, high), min(bar.low, low)
        else:
            bar.open, bar.high, bar.low = float(price[0]), high, low
        bar.close = float(price[-1])
        bar.volume = float(running_sum(bar.volume, size)[-1])
        bar.pv = float(running_sum(bar.pv, price * size)[-1])
        bar.count += len(price)

    def add(self, bar: OpenBar, ts: int, price: float, size: float, trade_id: str) -> bool:
        """Add one trade; False for a trade seen before (older, or as old with a known id)."""
        if ts < bar.last_ts or (ts == bar.last_ts and trade_id in bar.last_ids):
            bar.skipped += 1
            return False
        if ts != bar.last_ts:
            bar.last_ts, bar.last_ids = ts, set()
        bar.last_ids.add(trade_id)
        if ts >= bar.end:
            self._roll(bar, ts)
        if ts < bar.final_until:
            return True
        if bar.count:
            if price > bar.high:
                bar.high = price
            elif price < bar.low:
                bar.low = price
        else:
            bar.open = bar.high = bar.low = price
        bar.close = price
        bar.volume += size
        bar.pv += price * size
        bar.count += 1
        return True

    def _roll(self, bar: OpenBar, ts: int) -> None:
        if bar.count:
            self._emit(bar)
        bar.start = ts - ts % self._step
        bar.end = bar.start + self._step
        bar.count = 0
        bar.volume = bar.pv = 0.0

    def _emit(self, bar: OpenBar) -> None:
        out = self._closed
        out["symbol"].append(bar.symbol)
        out["timeframe"].append(self.timeframe)
        out["ts"].append(bar.start)
        out["open"].append(bar.open)
        out["high"].append(bar.high)
        out["low"].append(bar.low)
        out["close"].append(bar.close)
        out["volume"].append(bar.volume)
        out["trades"].append(bar.count)
        out["vwap"].append(bar.pv / bar.volume if bar.volume else bar.close)
        out["source"].append(bar.source)

    def mark_final(self, symbol: str, start: int, end: int) -> None:
        """The exchange's final bars cover ``[start, end)``: drop ours in that span."""
        bar = self.bar(symbol)
        if bar.start >= start and bar.start < end:
            bar.count = 0
            bar.volume = bar.pv = 0.0
        bar.final_until = max(bar.final_until, end)

    def take_closed(self) -> pa.Table:
        """The bars closed since the last call, as one canonical table."""
        out = self._closed
        self._closed = {name: [] for name in BAR_SCHEMA.names}
        return pa.table([pa.array(out[f.name], f.type) for f in BAR_SCHEMA], schema=BAR_SCHEMA)
