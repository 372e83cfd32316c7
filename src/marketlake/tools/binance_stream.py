"""The mirror's Binance websocket: combined ``@trade`` and ``@kline_1m`` streams, offline.

``ws://HOST:PORT/stream?streams=btcusdt@trade/btcusdt@kline_1m`` answers in
Binance's shapes (``{"stream": "btcusdt@trade", "data": {"e": "trade", …}}``)
with trades and klines of the same price path as the mirror's REST klines:
every minute's trades are a pure function of (symbol, minute) built from that
minute's bar (first trade at the open, one at the high, one at the low, the
last at the close, sizes summing to the volume), sent as wall-clock time
reaches them. An in-progress kline (``x: false``) aggregates the minute's
trades so far, about once a second; at the end of the minute the closed kline
(``x: true``) carries the very fields ``GET /api/v3/klines`` gives for it. Only
its quote volume (and so its vwap) is the bar's, not the trades' own.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import orjson
import pyarrow as pa
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from marketlake.schema import to_epoch_us

MINUTE_MS = 60_000
MAX_TRADES = 1000
"""Trades a minute has at most (the bar's trade count, capped)."""
TICK_S = 0.1
log = logging.getLogger(__name__)

BarSource = Callable[[str, str, datetime, datetime], pa.Table]


def _units(value: float) -> int:
    """``value`` in units of 1e-8 (Binance's quantities have 8 decimals)."""
    return round(value * 100_000_000)


def _decimal(units: int) -> str:
    return f"{units // 100_000_000}.{units % 100_000_000:08d}"


def kline_fields(bar: dict[str, Any], length_ms: int) -> dict[str, Any]:
    """The kline fields of one canonical bar, as the REST klines and the closed
    websocket kline both give them."""
    t = to_epoch_us(bar["ts"]) // 1000
    vol = bar["volume"]
    quote = vol * (bar["vwap"] if bar["vwap"] is not None else bar["close"])
    return {
        "t": t,
        "T": t + length_ms - 1,
        "o": f"{bar['open']:.8f}",
        "h": f"{bar['high']:.8f}",
        "l": f"{bar['low']:.8f}",
        "c": f"{bar['close']:.8f}",
        "v": f"{vol:.8f}",
        "n": bar["trades"] or 0,
        "q": f"{quote:.8f}",
        "V": f"{vol / 2:.8f}",
        "Q": f"{quote / 2:.8f}",
        "B": "0",
    }


@dataclass(frozen=True, slots=True)
class Minute:
    """One minute of a symbol: its bar and the trades that make it (time order)."""

    symbol: str
    start_ms: int
    bar: dict[str, Any]
    times: list[int]
    prices: list[str]
    sizes: list[int]
    maker: list[bool]
    first_id: int

    def trade(self, i: int, event_ms: int) -> dict[str, Any]:
        """Trade ``i`` as the ``data`` of a Binance trade message."""
        return {
            "e": "trade",
            "E": event_ms,
            "s": self.symbol,
            "t": self.first_id + i,
            "p": self.prices[i],
            "q": _decimal(self.sizes[i]),
            "T": self.times[i],
            "m": self.maker[i],
            "M": True,
        }

    def kline(self, upto: int, event_ms: int) -> dict[str, Any]:
        """The kline after the first ``upto`` trades; all of them: the closed kline."""
        final = upto >= len(self.times)
        if final:
            k = kline_fields(self.bar, MINUTE_MS)
        else:
            prices = [float(p) for p in self.prices[:upto]]
            units = sum(self.sizes[:upto])
            quote = sum(p * s for p, s in zip(prices, self.sizes[:upto], strict=True)) / 1e8
            k = {
                "t": self.start_ms,
                "T": self.start_ms + MINUTE_MS - 1,
                "o": self.prices[0],
                "h": self.prices[int(np.argmax(prices))],
                "l": self.prices[int(np.argmin(prices))],
                "c": self.prices[upto - 1],
                "v": _decimal(units),
                "n": upto,
                "q": f"{quote:.8f}",
                "V": _decimal(units // 2),
                "Q": f"{quote / 2:.8f}",
                "B": "0",
            }
        k |= {"s": self.symbol, "i": "1m", "x": final}
        k |= {"f": self.first_id, "L": self.first_id + max(upto, 1) - 1}
        return {"e": "kline", "E": event_ms, "s": self.symbol, "k": k}


class BinanceStream:
    """Trades and klines of every symbol, minute by minute, from a bar source."""

    def __init__(self, source: BarSource) -> None:
        self.source = source
        self._cache: OrderedDict[tuple[str, int], Minute] = OrderedDict()
        self._lock = threading.Lock()

    def minute(self, symbol: str, start_ms: int) -> Minute | None:
        """The trades of ``symbol`` in the minute starting at ``start_ms`` (None: no bar)."""
        key = (symbol, start_ms)
        with self._lock:
            found = self._cache.get(key)
        if found is not None:
            return found
        start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=start_ms)
        bars = self.source(symbol, "1m", start, start + timedelta(minutes=1)).to_pylist()
        made = _trades(symbol, start_ms, bars[0]) if bars else None
        if made is not None:
            with self._lock:
                self._cache[key] = made
                while len(self._cache) > 256:
                    self._cache.popitem(last=False)
        return made


def _trades(symbol: str, start_ms: int, bar: dict[str, Any]) -> Minute:
    """Trades whose aggregate is ``bar``: open first, close last, the high and the low
    in between, other prices on the path between them; sizes sum to the volume."""
    n = max(4, min(int(bar["trades"] or 0), MAX_TRADES))
    rng = np.random.default_rng([zlib.crc32(symbol.encode()), start_ms // MINUTE_MS])
    times = np.sort(rng.integers(0, MINUTE_MS, n)) + start_ms
    o, h, lo, c = bar["open"], bar["high"], bar["low"], bar["close"]
    hi_at, lo_at = (int(x) for x in rng.choice(np.arange(1, n - 1), 2, replace=False))
    anchors = sorted({0: o, hi_at: h, lo_at: lo, n - 1: c}.items())
    path = np.interp(np.arange(n), [a for a, _ in anchors], [p for _, p in anchors])
    path += rng.normal(0.0, (h - lo) * 0.1, n)
    values = np.clip(path, lo, h).round(6)
    prices = [f"{p:.8f}" for p in values.tolist()]
    for at, price in anchors:
        prices[at] = f"{price:.8f}"
    total = _units(bar["volume"])
    weights = rng.exponential(1.0, n)
    sizes = np.floor(weights / weights.sum() * total).astype(np.int64).tolist()
    sizes[-1] += total - sum(sizes)
    first_id = start_ms // MINUTE_MS * MAX_TRADES
    return Minute(
        symbol,
        start_ms,
        bar,
        times.tolist(),
        prices,
        sizes,
        (rng.random(n) < 0.5).tolist(),
        first_id,
    )


def _subscriptions(path: str) -> dict[str, set[str]] | str:
    """``{SYMBOL: {"trade", "kline"}}`` of a combined-stream path, or what is wrong."""
    url = urlsplit(path)
    if url.path.rstrip("/") != "/stream":
        return f"the mirror serves /stream?streams=…, not {url.path}"
    names = dict(parse_qsl(url.query)).get("streams", "")
    subs: dict[str, set[str]] = {}
    for name in filter(None, names.split("/")):
        symbol, _, kind = name.partition("@")
        if kind not in ("trade", "kline_1m") or not symbol:
            return f"the mirror has no stream {name!r} (only <symbol>@trade and <symbol>@kline_1m)"
        subs.setdefault(symbol.upper(), set()).add(kind.split("_")[0])
    return subs or "no streams: use /stream?streams=btcusdt@trade/btcusdt@kline_1m"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class StreamServer:
    """The websocket server (a thread per connection); ``close()`` stops it."""

    def __init__(
        self,
        stream: BinanceStream,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.stream = stream
        self.clock = clock
        self._closing = threading.Event()
        self.server: Server = serve(self._handle, host, port, compression=None)
        self.url = f"ws://{host}:{self.server.socket.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop accepting; open connections are closed (1001) within a tick."""
        self._closing.set()
        self.server.shutdown()

    def _handle(self, ws: ServerConnection) -> None:
        subs = _subscriptions(ws.request.path if ws.request is not None else "")
        if isinstance(subs, str):
            ws.close(1008, subs[:120])
            return
        try:
            self._send_forever(ws, subs)
        except ConnectionClosed:
            return

    def _send_forever(self, ws: ServerConnection, subs: dict[str, set[str]]) -> None:
        sent_until = self.clock()  # trades before this were sent (or before the connection)
        kline_at: dict[str, tuple[int, int]] = {}  # symbol -> (minute, trades in last kline)
        next_kline = 0.0
        while not self._closing.is_set():
            now = self.clock()
            frames: list[bytes] = []
            klines_due = time.monotonic() >= next_kline
            for minute_ms in range(sent_until - sent_until % MINUTE_MS, now, MINUTE_MS):
                lo, hi = max(sent_until, minute_ms), min(now, minute_ms + MINUTE_MS)
                closed = hi == minute_ms + MINUTE_MS
                for symbol, kinds in subs.items():
                    minute = self.stream.minute(symbol, minute_ms)
                    if minute is None:
                        continue
                    name = symbol.lower()
                    first = int(np.searchsorted(minute.times, lo))
                    upto = int(np.searchsorted(minute.times, hi))
                    if "trade" in kinds:
                        frames += [
                            _frame(f"{name}@trade", minute.trade(i, now))
                            for i in range(first, upto)
                        ]
                    if "kline" not in kinds or upto == 0:
                        continue
                    if closed:
                        frames.append(_frame(f"{name}@kline_1m", minute.kline(upto, now)))
                    elif klines_due and kline_at.get(symbol) != (minute_ms, upto):
                        kline_at[symbol] = (minute_ms, upto)
                        frames.append(_frame(f"{name}@kline_1m", minute.kline(upto, now)))
            if klines_due:
                next_kline = time.monotonic() + 1.0
            sent_until = max(sent_until, now)
            for frame in frames:
                ws.send(frame.decode())
            self._closing.wait(TICK_S)
        ws.close(1001, "the mirror is stopping")


def _frame(stream: str, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})
