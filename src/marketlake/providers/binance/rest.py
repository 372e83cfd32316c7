"""Binance spot klines: ``GET /api/v3/klines``, paged by time.

Each kline is a 12-field array: open time (ms), open, high, low, close, volume
(base asset, as decimal strings), close time (ms), quote-asset volume, number of
trades, taker-buy base volume, taker-buy quote volume, and an unused field. Bars
take the open time as ``ts``, the trade count as ``trades`` and quote volume /
volume as ``vwap``. ``endTime`` is inclusive at Binance, so a half-open range
``[start, end)`` asks for ``endTime = end - 1 ms``.

Binance meters requests by weight; the ``X-MBX-USED-WEIGHT-1m`` header of every
answer says how much of the minute's budget is used, and the provider waits for
the next minute before the budget runs out. 429 and 418 answers are retried
after their ``Retry-After`` (see :mod:`marketlake.providers.http`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from typing import Any, ClassVar, TypeAlias

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from marketlake.config import Settings
from marketlake.errors import InputError, MarketLakeError, ProviderError, SymbolNotFoundError
from marketlake.providers.http import HttpProvider, Params, decode_json
from marketlake.schema import (
    BAR_SCHEMA,
    TS_TYPE,
    Instrument,
    Timeframe,
    constant_column,
    to_epoch_us,
)

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
_FLOAT, _INT, _TEXT = pa.float64(), pa.int64(), pa.string()
_Page: TypeAlias = httpx.Response | pa.Table
"""A page of klines as it came (plain layout, read later) or already read."""
_FIELDS = (
    "open time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close time",
    "quote volume",
    "trades",
    "taker buy base volume",
    "taker buy quote volume",
    "ignore",
)


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
                extent = _extent(response.content)
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
            table = _read_klines(bodies, symbol, timeframe)
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
        table = _read_klines([response.content], symbol, timeframe)
        if table is None:  # not the plain layout: the JSON parser reads it, or says what is wrong
            table = _parse_klines(decode_json(self.name, response), symbol, timeframe)
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


_CSV_NAMES = ["lead", *(f"f{i}" for i in range(len(_FIELDS)))]
_CSV_TYPES = {"f0": _INT, "f8": _INT, **{f"f{i}": _FLOAT for i in (1, 2, 3, 4, 5, 7)}}
_CSV_READ = pa_csv.ReadOptions(column_names=_CSV_NAMES, use_threads=False)
_CSV_CONVERT = pa_csv.ConvertOptions(
    column_types=_CSV_TYPES,
    include_columns=list(_CSV_TYPES),
    null_values=[],
    strings_can_be_null=False,
)
_ROWS = bytes.maketrans(b"]", b"\n")


def _extent(body: bytes) -> tuple[int, int] | None:
    """The number of klines and the last open time (ms) of a page in Binance's plain
    layout, read off its bytes; None when the body looks otherwise."""
    if not (body.startswith(b"[[") and body.endswith(b"]]")):
        return None
    comma = body.rfind(b",[")
    last = comma + 2 if comma >= 0 else 2  # where the last kline's fields begin
    try:
        return body.count(b"],[") + 1, int(body[last : body.find(b",", last)])
    except ValueError:
        return None


def _read_klines(bodies: Sequence[bytes], symbol: str, timeframe: str) -> pa.Table | None:
    """Klines straight from the bodies of pages when each has Binance's plain layout,
    ``[[...],[...]]`` with exactly 12 fields per kline (the 8 it takes are numbers or
    decimal strings) and nothing else; None otherwise.

    The rows of all pages are read as one CSV by Arrow, which is about twice as fast as
    building Python lists with a JSON parser and converting them; anything unusual
    (spaces, nulls, extra fields, cut or malformed bodies) is left to
    :func:`_parse_klines`. Every ``],[`` becomes a line break followed by a comma (so
    each line has an empty lead field).
    """
    klines = 0
    for body in bodies:
        if not (body.startswith(b"[[") and body.endswith(b"]]")):
            return None
        opening = body.count(b"[")  # one per kline and the outer one, when nothing is nested
        if body.count(b"]") != opening or any(c in body for c in (b"{", b"}", b" ")):
            return None
        klines += opening - 1
    text = b"\n".join(b"," + body[2:-2].translate(_ROWS, b"[") for body in bodies)
    try:
        read = pa_csv.read_csv(
            pa.BufferReader(text), read_options=_CSV_READ, convert_options=_CSV_CONVERT
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    columns = [
        read.column(name).combine_chunks()
        for name in ("f0", "f1", "f2", "f3", "f4", "f5", "f7", "f8")
    ]
    if read.num_rows != klines or any(c.null_count for c in columns):
        return None
    return _klines_table(symbol, timeframe, *columns)


def _parse_klines(payload: Any, symbol: str, timeframe: str) -> pa.Table:
    """Kline arrays → canonical bars; fields beyond the 12th are ignored."""
    if not isinstance(payload, list):
        raise ProviderError(
            f"binance klines for {symbol} should be a JSON array, got {type(payload).__name__}"
        )
    if not payload:
        return BAR_SCHEMA.empty_table()
    try:
        width = min(map(len, payload))
    except TypeError:
        width = 0
    if width < len(_FIELDS):
        row = next(i for i, r in enumerate(payload) if not isinstance(r, list) or len(r) == width)
        raise ProviderError(
            f"binance kline {row} of {symbol} has {width} fields; expected 12 "
            f"({', '.join(_FIELDS)}) — the response format changed or was cut"
        )
    columns = list(zip(*payload, strict=False))
    prices = [_numbers(columns[i], _FIELDS[i], symbol) for i in (1, 2, 3, 4, 5, 7)]
    return _klines_table(
        symbol,
        timeframe,
        _numbers(columns[0], "open time", symbol, _INT),
        prices[0],
        prices[1],
        prices[2],
        prices[3],
        prices[4],
        prices[5],
        _numbers(columns[8], "trades", symbol, _INT),
    )


def _klines_table(
    symbol: str,
    timeframe: str,
    open_ms: pa.Array,
    open_: pa.Array,
    high: pa.Array,
    low: pa.Array,
    close: pa.Array,
    volume: pa.Array,
    quote_volume: pa.Array,
    trades: pa.Array,
) -> pa.Table:
    """Canonical bars from the kline fields they take."""
    vwap = pc.if_else(
        pc.greater(volume, 0.0), pc.divide(quote_volume, volume), pa.scalar(None, pa.float64())
    )
    n = len(open_ms)
    return pa.table(
        {
            "symbol": constant_column(symbol, n),
            "timeframe": constant_column(timeframe, n),
            "ts": pc.multiply(open_ms, 1000).cast(TS_TYPE),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "trades": trades,
            "vwap": vwap,
            "source": constant_column("binance", n),
        },
        schema=BAR_SCHEMA,
    )


def _numbers(
    values: tuple[Any, ...], field: str, symbol: str, typ: pa.DataType = _FLOAT
) -> pa.Array:
    """One kline field as a typed column; decimal strings and JSON numbers both work."""
    try:
        try:  # prices and volumes come as decimal strings, times and counts as integers
            column = pa.array(values, typ) if typ == _INT else pa.array(values, _TEXT).cast(typ)
        except pa.ArrowTypeError:
            column = pa.array(values).cast(typ)  # … or, were that to change, otherwise
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise ProviderError(
            f"binance kline field {field!r} of {symbol} is not a number: {exc}"
        ) from None
    if column.null_count:
        raise ProviderError(
            f"binance kline field {field!r} of {symbol} has {column.null_count} empty values"
        )
    return column
