"""Binance spot klines: ``GET /api/v3/klines``, paged by time.

Each kline is a 12-field array, read into canonical bars by
:mod:`marketlake.providers.binance.klines` (the parser the live feed shares).
``endTime`` is inclusive at Binance, so a half-open range ``[start, end)`` asks for
``endTime = end - 1 ms``.

Binance meters requests by weight; the ``X-MBX-USED-WEIGHT-1m`` header of every
answer says how much of the minute's budget is used, and the provider waits for
the next minute before the budget runs out. 429 and 418 answers are retried
after their ``Retry-After`` (see :mod:`marketlake.providers.http`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any, ClassVar, TypeAlias

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from marketlake.config import Settings
from marketlake.errors import InputError, MarketLakeError, ProviderError, SymbolNotFoundError
from marketlake.providers.binance.klines import page_extent, parse_klines, read_plain_klines
from marketlake.providers.http import HttpProvider, Params, decode_json
from marketlake.schema import BAR_SCHEMA, Instrument, Timeframe, to_epoch_us

_INTERVALS = {
    "1m": "1m",
    "3m": "3m",
    "5m": "5m",
    "15m": "15m",
    "30m": "30m",
    "1h": "1h",
    "2h": "2h",
    "4h": "4h",
    "6h": "6h",
    "8h": "8h",
    "12h": "12h",
    "1d": "1d",
    "3d": "3d",
    "1w": "1w",
    "1mo": "1M",
}
_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY", "BRL")
_Page: TypeAlias = httpx.Response | pa.Table
"""A page of klines as it came (plain layout, read later) or already read."""


class BinanceProvider(HttpProvider):
    """Spot klines from Binance (or a mirror at ``MARKETLAKE_BINANCE_URL``)."""

    name: ClassVar[str] = "binance"
    timeframes: ClassVar[tuple[str, ...]] = tuple(_INTERVALS)
    requests_per_minute: ClassVar[int] = 2400  # klines weigh 2 of 6000 a minute
    base_url_setting: ClassVar[str] = "binance_url"
    page_limit: ClassVar[int] = 1000
    pages_ahead: ClassVar[int] = 16
    """Pages fetched ahead of the parsing at most (a bound on the memory held)."""
    weight_limit_1m: ClassVar[int] = 6000

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(settings, client)
        self.used_weight_1m = 0

    async def fetch_bars(
        self, symbol: str, timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> AsyncGenerator[pa.Table, None]:
        """Pages by time. A page's last open time is read off its bytes, so the next page
        is requested at once; the pages that arrive meanwhile are parsed together in a
        thread (Arrow's CSV reader runs without the GIL), so parsing does not hold up the
        requests. When a page is wrong, the pages before it are yielded, then its error
        is raised."""
        tf = self.check_timeframe(timeframe)
        symbol = symbol.upper()
        start_us, end_us = to_epoch_us(start), to_epoch_us(end)
        first_ms, last_ms = -(-start_us // 1000), -(-end_us // 1000) - 1
        if first_ms > last_ms:
            return
        pages: asyncio.Queue[_Page | None] = asyncio.Queue(self.pages_ahead)
        fetching = asyncio.ensure_future(
            self._fetch_pages(symbol, _INTERVALS[str(tf)], str(tf), first_ms, last_ms, pages)
        )
        try:
            ended = False
            while not ended:
                arrived = [await pages.get()]
                while not pages.empty():
                    arrived.append(pages.get_nowait())
                ended = arrived[-1] is None
                got = [page for page in arrived if page is not None]
                if not got:
                    continue
                table, error = await asyncio.to_thread(self._read_pages, got, symbol, str(tf))
                if table.num_rows:
                    yield _inside(table, start_us, end_us)
                if error is not None:
                    raise error
            await fetching  # raises what stopped the requests, after the pages before it
        finally:
            if not fetching.done():
                fetching.cancel()
                with contextlib.suppress(asyncio.CancelledError, MarketLakeError):
                    await fetching

    async def _fetch_pages(
        self,
        symbol: str,
        interval: str,
        timeframe: str,
        start_ms: int,
        last_ms: int,
        pages: asyncio.Queue[_Page | None],
    ) -> None:
        """Request pages until one is not full or the range ends, handing each over, then
        None (also when a request fails: the reader then awaits this task for its error)."""
        try:
            while start_ms <= last_ms:
                await self._respect_weight()
                params: Params = {
                    "symbol": symbol,
                    "interval": interval,
                    "startTime": start_ms,
                    "endTime": last_ms,
                    "limit": self.page_limit,
                }
                response = await self.get("/api/v3/klines", params, symbol=symbol)
                extent = page_extent(response.content)
                page: _Page
                if extent is None:  # not the plain layout: parsed here, to know where it ends
                    table = self._page_table(response, symbol, timeframe)
                    rows, page = table.num_rows, table
                    last = _epoch_ms(table.column("ts")[-1]) if rows else 0
                else:
                    page, (rows, last) = response, extent
                if rows:
                    await pages.put(page)
                if rows < self.page_limit:
                    break
                if last < start_ms:  # a page from before the one asked for: it would repeat
                    raise ProviderError(
                        f"binance answered the klines from startTime={start_ms} with the page "
                        f"before it (last open time {last}); the server or a mirror in "
                        "between does not page by time"
                    )
                start_ms = last + 1
        except Exception:
            await pages.put(None)
            raise
        await pages.put(None)

    def _read_pages(
        self, pages: list[_Page], symbol: str, timeframe: str
    ) -> tuple[pa.Table, MarketLakeError | None]:
        """The bars of ``pages`` (one CSV read when all have the plain layout), and the
        error of the first wrong page, with only the pages before it read."""
        bodies = [page.content for page in pages if isinstance(page, httpx.Response)]
        if len(bodies) == len(pages):
            table = read_plain_klines(bodies, symbol, timeframe)
            if table is not None:
                return table, None
        tables: list[pa.Table] = []
        error = None
        for page in pages:
            try:
                tables.append(
                    page
                    if isinstance(page, pa.Table)
                    else self._page_table(page, symbol, timeframe)
                )
            except MarketLakeError as exc:
                error = exc
                break
        return (pa.concat_tables(tables) if tables else BAR_SCHEMA.empty_table()), error

    def _page_table(self, response: httpx.Response, symbol: str, timeframe: str) -> pa.Table:
        """One page of klines as canonical bars (all of them, also those past the range)."""
        table = read_plain_klines([response.content], symbol, timeframe)
        if table is None:  # not the plain layout: the JSON parser reads it, or says what is wrong
            table = parse_klines(decode_json(self.name, response), symbol, timeframe)
        return table

    async def describe(self, symbol: str) -> Instrument | None:
        symbol = symbol.upper()
        quote = next((q for q in _QUOTES if symbol.endswith(q) and symbol != q), "")
        return Instrument(
            symbol=symbol,
            name=symbol,
            asset_class="crypto",
            exchange="BINANCE",
            currency=quote or "USDT",
            timezone="UTC",
        )

    def after_response(self, response: httpx.Response) -> None:
        used = response.headers.get("x-mbx-used-weight-1m")
        if used is not None and used.isdigit():
            self.used_weight_1m = int(used)

    async def _respect_weight(self) -> None:
        """Wait for the next minute when 90 % of the minute's request weight is used."""
        if self.used_weight_1m >= 0.9 * self.weight_limit_1m:
            await self.sleep(60.0 - time.time() % 60.0 + 0.5)
            self.used_weight_1m = 0

    def vendor_error(self, status: int, payload: Any, symbol: str) -> MarketLakeError:
        code = payload.get("code") if isinstance(payload, dict) else None
        msg = payload.get("msg", payload) if isinstance(payload, dict) else payload
        if code == -1121:
            return SymbolNotFoundError(f"no such symbol at binance: {symbol} ({msg})")
        if code in (-1120, -1100, -1102):
            return InputError(f"binance rejected the request for {symbol}: {msg}")
        return ProviderError(f"binance answered HTTP {status} for {symbol}: code {code}, {msg}")


def _inside(table: pa.Table, start_us: int, end_us: int) -> pa.Table:
    """The bars of a page with times in ``[start_us, end_us)``."""
    ts = table.column("ts").cast(pa.int64())
    bounds = pc.min_max(ts).as_py()
    if start_us <= bounds["min"] and bounds["max"] < end_us:
        return table
    return table.filter(pc.and_(pc.greater_equal(ts, start_us), pc.less(ts, end_us)))


def _epoch_ms(value: pa.Scalar) -> int:
    return int(value.cast(pa.int64()).as_py()) // 1000
