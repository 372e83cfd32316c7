"""Live Binance market data: combined ``@trade`` and ``@kline_1m`` websocket streams.

The feed connects to ``{MARKETLAKE_BINANCE_WS_URL}/stream?streams=btcusdt@trade/
btcusdt@kline_1m/…``, turns every message into canonical trades or bars and
publishes them in batches (at most ``stream_batch_events`` per batch,
``stream_linger_ms`` at most of waiting) through an injected ``publish``.

Staying connected:

* Pings from the server are answered (the ``websockets`` library pongs) and
  the client pings too, so a dead TCP connection is noticed.
* A silent connection (no message for ``stream_stall_s``) is dropped and
  reconnected; so is one that fails, or a ``serverShutdown`` event.
* Reconnects wait ``min(max, initial * 2**attempt)``, half of it jittered.
* Binance closes connections at 24 hours: the feed reconnects on its own
  after ``stream_max_connection_s`` (23.5 h by default).
* After a reconnect the minutes missed are fetched from the REST klines
  endpoint through the REST provider (its retries, rate limits and circuit
  breaker) and published once as final bars (``role="backfill"``); a minute
  is only backfilled if no final kline for it arrived, so nothing is written twice.
* Websocket and REST klines are read by one parser
  (:mod:`marketlake.providers.binance.klines`), so both give the same bars (a
  kline with no volume has a null ``vwap``).
* Outside the ingestion windows the feed is disconnected; no backfill covers
  the closed time.

A malformed or unknown message is counted, logged (the first few, then every
thousandth) and skipped: input never stops the feed. :class:`FeedState` is
the connection state (published through ``status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import httpx
import orjson
import pyarrow as pa
import websockets
from websockets.asyncio.client import connect as ws_connect

from marketlake.config import Settings
from marketlake.errors import BusError, MarketLakeError
from marketlake.providers.binance.klines import BAR_VALUES, SOURCE, parse_kline_event
from marketlake.providers.binance.rest import BinanceProvider
from marketlake.schema import BAR_SCHEMA, from_epoch_us, normalize_symbol
from marketlake.stream.bus.base import backoff
from marketlake.stream.events import Batch, bars_table, now_us, trades_table
from marketlake.stream.windows import Schedule

log = logging.getLogger(__name__)
MINUTE_US = 60_000_000
Publish = Callable[[Sequence[Batch]], Awaitable[Any]]
Connect = Callable[..., Any]
"""``websockets.asyncio.client.connect`` or anything called the same way."""


class _Reconnect(Exception):
    """Leave the current connection (stall, planned, server shutdown)."""

    def __init__(self, reason: str, *, planned: bool = False) -> None:
        super().__init__(reason)
        self.planned = planned


@dataclass(slots=True)
class FeedState:
    """The connection state of a feed, as shown by ``/ready``, metrics and the CLI."""

    feed: str
    symbols: list[str]
    state: str = "idle"  # idle | connecting | connected | reconnecting | outside-window | stopped
    connected_since_us: int | None = None
    last_message_us: int | None = None
    messages: int = 0
    trades: int = 0
    bars: int = 0
    malformed: int = 0
    unknown: int = 0
    reconnects: int = 0
    planned_reconnects: int = 0
    stalls: int = 0
    backfilled_bars: int = 0
    unpublished: int = 0
    gaps: list[list[int]] = field(default_factory=list)
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        last = self.last_message_us
        data["last_message_age_s"] = None if last is None else (now_us() - last) / 1e6
        data["updated_us"] = now_us()
        return data


class BinanceFeed:
    """Trades and 1m klines of ``symbols`` from Binance, published in batches.

    ``connect`` (the websocket client), ``client`` (HTTP, for the backfill's
    :class:`BinanceProvider`, which makes its own when given none),
    ``jitter`` and ``clock`` (epoch µs: decides windows and the backfill
    range) are injectable; tests pass a local server and a recorded clock.
    """

    name = "binance"

    def __init__(
        self,
        settings: Settings,
        symbols: Sequence[str],
        publish: Publish,
        *,
        connect: Connect = ws_connect,
        client: httpx.AsyncClient | None = None,
        schedule: Schedule | None = None,
        status: Callable[[FeedState], Awaitable[None]] | None = None,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.settings = settings
        self.symbols = [normalize_symbol(s) for s in symbols]
        self._wanted = set(self.symbols)
        self.publish = publish
        self.connect = connect
        self.rest = BinanceProvider(settings, client)
        self.schedule = schedule or Schedule()
        self.status = status
        self.jitter = jitter
        self.clock = clock
        self.state = FeedState(self.name, self.symbols)
        self._trades: dict[str, dict[str, list[Any]]] = {}
        self._bars: dict[tuple[str, bool], dict[str, list[Any]]] = {}
        self._pending = 0
        self._flush_lock = asyncio.Lock()
        self._unsent: list[Batch] = []
        self._bus_failures = 0
        self._retry_at = 0.0
        self._complete_until: dict[str, int] = {}
        self._last_seen_us: int | None = None

    @property
    def url(self) -> str:
        streams = "/".join(f"{s.lower()}@trade/{s.lower()}@kline_1m" for s in self.symbols)
        return f"{self.settings.binance_ws_url.rstrip('/')}/stream?streams={streams}"

    # -- the connection loop ----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> FeedState:
        """Stream until ``stop`` is set; whatever is buffered is published before returning."""
        flusher = asyncio.create_task(self._flusher(stop))
        try:
            await self._loop(stop)
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await self.flush(attempts=3)
            await self.rest.aclose()
            await self._set("stopped")
        return self.state

    async def _loop(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            now = from_epoch_us(self.clock())
            if not self.schedule.is_open(now):
                await self._outside_window(stop, now)
                continue
            await self._set("connecting" if self.state.state != "reconnecting" else "reconnecting")
            planned = False
            try:
                planned = await self._session(stop, self.schedule.open_until(now))
                attempt = 0
            except _Reconnect as exc:
                planned = exc.planned
                self.state.last_error = None if planned else str(exc)
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                self.state.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("binance feed: %s", self.state.last_error)
            self.state.connected_since_us = None
            if stop.is_set():
                return
            if planned:
                self.state.planned_reconnects += 1
            else:
                self.state.reconnects += 1
            await self._set("reconnecting")
            if not planned:
                await _sleep(stop, self._backoff(attempt))
                attempt += 1

    def _backoff(self, attempt: int) -> float:
        """Exponential delay, the upper half jittered."""
        cap = min(
            self.settings.stream_backoff_max_s,
            self.settings.stream_backoff_initial_s * 2.0 ** min(attempt, 30),
        )
        return cap / 2 + cap / 2 * self.jitter()

    async def _outside_window(self, stop: asyncio.Event, now: datetime) -> None:
        self._complete_until.clear()  # nothing is owed for the closed time
        self._last_seen_us = None
        await self._set("outside-window")
        opens = self.schedule.next_open(now)
        wait = 3600.0 if opens is None else max(0.05, (opens - now).total_seconds())
        await _sleep(stop, min(wait, 1.0))

    async def _session(self, stop: asyncio.Event, window_end: datetime | None) -> bool:
        """One connection; True when it ended as planned (24 h limit or window end)."""
        deadline = time.monotonic() + self.settings.stream_max_connection_s
        if window_end is not None:
            left = (window_end - from_epoch_us(self.clock())).total_seconds()
            deadline = min(deadline, time.monotonic() + left)
        async with self.connect(
            self.url,
            ping_interval=20,
            ping_timeout=20,
            open_timeout=10,
            close_timeout=2,
            max_size=2**22,
        ) as ws:
            self.state.connected_since_us = now_us()
            await self._set("connected")
            await self._backfill()
            return await self._receive(ws, stop, deadline)

    async def _receive(self, ws: Any, stop: asyncio.Event, deadline: float) -> bool:
        stall = self.settings.stream_stall_s
        last = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                return True
            if now - last >= stall:
                self.state.stalls += 1
                raise _Reconnect(f"no message for {stall:g} s: reconnecting")
            try:
                async with asyncio.timeout(min(0.5, deadline - now, stall - (now - last))):
                    raw = await ws.recv()
            except TimeoutError:
                continue
            last = time.monotonic()
            self.handle(raw)
            if self._pending >= self.settings.stream_batch_events:
                await self.flush()
        return False

    async def _set(self, state: str) -> None:
        self.state.state = state
        await self._report()

    async def _report(self) -> None:
        """Hand the state to ``status``; a bus that is down only loses the report."""
        if self.status is not None:
            with contextlib.suppress(BusError):
                await self.status(self.state)

    async def _flusher(self, stop: asyncio.Event) -> None:
        linger = max(self.settings.stream_linger_ms / 1000, 0.001)
        next_status = 0.0
        while True:
            await asyncio.sleep(linger)
            await self.flush()
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + 1.0
                await self._report()

    # -- messages → canonical rows ------------------------------------------------------

    def handle(self, raw: str | bytes) -> None:
        """Parse one websocket message into the batch buffers; never raises on bad input."""
        self.state.messages += 1
        self.state.last_message_us = now_us()
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._malformed("not JSON", raw)
            return
        data = message.get("data", message) if isinstance(message, dict) else None
        if not isinstance(data, dict):
            self._malformed("not a JSON object", raw)
            return
        kind = data.get("e")
        try:
            if kind == "trade":
                self._parse_trade(data)
            elif kind == "kline":
                self._parse_kline(data["k"])
            elif kind == "serverShutdown":
                raise _Reconnect("the server announced a shutdown", planned=True)
            elif "result" not in data:  # replies to SUBSCRIBE … carry "result"
                self.state.unknown += 1
                _log_sometimes(self.state.unknown, "unknown binance message: %.200r", raw)
        except (KeyError, TypeError, ValueError) as exc:
            self._malformed(f"{type(exc).__name__}: {exc}", raw)

    def _malformed(self, why: str, raw: str | bytes) -> None:
        self.state.malformed += 1
        _log_sometimes(
            self.state.malformed, "skipping malformed binance message (%s): %.200r", why, raw
        )

    def _parse_trade(self, data: dict[str, Any]) -> None:
        symbol = str(data["s"]).upper()
        price, qty = float(data["p"]), float(data["q"])
        if not (price > 0 and qty >= 0 and math.isfinite(price) and math.isfinite(qty)):
            raise ValueError(f"price {price} or quantity {qty} out of range")
        if symbol not in self._wanted:
            raise ValueError(f"symbol {symbol} was not subscribed")
        row = (int(data["T"]) * 1000, price, qty, "sell" if data["m"] else "buy", str(data["t"]))
        buf = self._trades.get(symbol)
        if buf is None:
            buf = self._trades[symbol] = {k: [] for k in ("ts", "price", "size", "side", "id")}
        for key, value in zip(("ts", "price", "size", "side", "id"), row, strict=True):
            buf[key].append(value)
        self._seen(symbol, row[0])
        self.state.trades += 1
        self._pending += 1

    def _parse_kline(self, k: dict[str, Any]) -> None:
        kline = parse_kline_event(k)
        symbol, ts, final = kline.symbol, kline.ts, kline.final
        if kline.interval != "1m" or symbol not in self._wanted:
            raise ValueError(f"kline {kline.interval} of {symbol} was not subscribed")
        buf = self._bars.get((symbol, final))
        if buf is None:
            buf = self._bars[(symbol, final)] = {name: [] for name in BAR_VALUES}
        for name, value in zip(BAR_VALUES, kline[-len(BAR_VALUES) :], strict=True):
            buf[name].append(value)
        if final:
            self._complete_until[symbol] = max(self._complete_until.get(symbol, 0), ts + MINUTE_US)
        self._seen(symbol, ts)
        self.state.bars += 1
        self._pending += 1

    def _seen(self, symbol: str, ts: int) -> None:
        self._last_seen_us = ts if self._last_seen_us is None else max(self._last_seen_us, ts)
        self._complete_until.setdefault(symbol, ts - ts % MINUTE_US)

    async def flush(self, *, attempts: int | None = None) -> None:
        """Publish everything buffered, one batch per symbol and kind, in arrival order."""
        async with self._flush_lock:
            trades, self._trades = self._trades, {}
            bars, self._bars = self._bars, {}
            self._pending = 0
            batches = [
                Batch(
                    "trade",
                    s,
                    trades_table(s, b["ts"], b["price"], b["size"], b["side"], b["id"], SOURCE),
                )
                for s, b in trades.items()
            ]
            batches += [
                Batch("bar", s, bars_table(s, "1m", SOURCE, b), "live", final)
                for (s, final), b in bars.items()
            ]
            self._unsent += batches
            self.state.unpublished += sum(len(b) for b in batches)
            await self._send(attempts=attempts)

    async def _publish(self, batches: list[Batch]) -> None:
        """Publish ``batches`` now (after whatever is still unsent)."""
        async with self._flush_lock:
            self._unsent += batches
            self.state.unpublished += sum(len(b) for b in batches)
            await self._send()

    async def _send(self, *, attempts: int | None = None) -> None:
        """Publish the unsent batches, in order. While the bus is down they are kept and
        reading goes on, retried with backoff, up to ``stream_buffer_events``; past that
        this waits for the bus (reading pauses: the exchange's buffer and, after a
        disconnect, the backfill take over). After ``attempts`` failures (at shutdown)
        give up and log what is lost."""
        failures = 0
        while self._unsent:
            full = self.state.unpublished > self.settings.stream_buffer_events
            if attempts is None and not full and time.monotonic() < self._retry_at:
                return  # backing off: keep reading
            try:
                await self.publish(self._unsent)
            except BusError as exc:
                failures += 1
                self._bus_failures += 1
                delay = backoff(self._bus_failures, initial=0.1, cap=5.0)
                self._retry_at = time.monotonic() + delay
                self.state.last_error = f"bus: {exc.message}"
                if attempts is not None and failures >= attempts:
                    log.error(
                        "binance feed: %d events not published: %s",
                        self.state.unpublished,
                        exc.message,
                    )
                    self._unsent, self.state.unpublished = [], 0
                    return
                log.warning(
                    "binance feed: publishing failed (%s); %d events kept, retrying in %.1f s",
                    exc.message,
                    self.state.unpublished,
                    delay,
                )
                if full or attempts is not None:
                    await asyncio.sleep(delay)
                continue
            if self._bus_failures:
                log.info("binance feed: publishing again (%d events)", self.state.unpublished)
            self._unsent, self.state.unpublished, self._bus_failures = [], 0, 0

    # -- backfill after a reconnect -----------------------------------------------------

    async def _backfill(self) -> None:
        """Publish the final 1m bars of every minute missed while disconnected."""
        if self._last_seen_us is None:
            return  # first connection (or first since a window opened): nothing was missed
        await self.flush()
        end = self.clock() // MINUTE_US * MINUTE_US
        for symbol in self.symbols:
            start = self._complete_until.get(symbol, self._last_seen_us // MINUTE_US * MINUTE_US)
            if start >= end:
                continue
            try:
                table = await self._klines(symbol, start, end)
            except MarketLakeError as exc:
                self.state.gaps.append([start, end])
                self.state.last_error = f"backfill of {symbol} failed: {exc}"
                log.error(
                    "binance backfill %s %s..%s failed: %s; fill it with `marketlake "
                    "ingest binance %s -t 1m`",
                    symbol,
                    start,
                    end,
                    exc,
                    symbol,
                )
                continue
            if table.num_rows:
                await self._publish([Batch("bar", symbol, table, "backfill", final=True)])
                self.state.backfilled_bars += table.num_rows
            self._complete_until[symbol] = end

    async def _klines(self, symbol: str, start_us: int, end_us: int) -> pa.Table:
        """The final 1m bars of ``[start_us, end_us)`` from the REST klines, through the
        REST provider (its retries, rate limits and breaker, and the shared parser)."""
        tables = [
            table
            async for table in self.rest.fetch_bars(
                symbol, "1m", from_epoch_us(start_us), from_epoch_us(end_us)
            )
        ]
        return pa.concat_tables(tables) if tables else BAR_SCHEMA.empty_table()


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, waking early when ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _log_sometimes(count: int, message: str, *args: Any) -> None:
    if count <= 10 or count % 1000 == 0:
        log.warning(message + " (%d so far)", *args, count)
