"""Alpaca market data: stock bars on v2, crypto bars on v1beta3.

* ``GET /v2/stocks/{symbol}/bars`` answers ``{"bars": [...], "symbol": ...,
  "next_page_token": ...}``; the multi-symbol ``GET /v2/stocks/bars?symbols=A,B``
  and ``GET /v1beta3/crypto/us/bars?symbols=BTC/USD`` answer
  ``{"bars": {"A": [...], ...}, "next_page_token": ...}``.
* A bar is ``{"t": RFC 3339, "o", "h", "l", "c", "v", "n": trades, "vw": vwap}``.
* Pages continue while ``next_page_token`` is set (sent back as ``page_token``).
* Stock requests carry ``feed`` (``iex`` or ``sip``, setting ``MARKETLAKE_ALPACA_FEED``)
  and ``adjustment=raw``: the store keeps bars as traded and adjusts on read.
* Credentials go in the ``APCA-API-KEY-ID`` and ``APCA-API-SECRET-KEY`` headers,
  read from settings and never logged; crypto bars need none.

Daily bars are stamped at local midnight (New York for stocks, Chicago for
crypto); they become the trading date at 00:00 UTC like every daily bar.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from marketlake.errors import (
    ConfigError,
    InputError,
    MarketLakeError,
    ProviderError,
    SymbolNotFoundError,
)
from marketlake.providers.base import session_labels
from marketlake.providers.http import HttpProvider, Params
from marketlake.schema import BAR_SCHEMA, TS_TYPE, Instrument, Timeframe

_TIMEFRAMES = {
    "1m": "1Min",
    "5m": "5Min",
    "15m": "15Min",
    "30m": "30Min",
    "1h": "1Hour",
    "4h": "4Hour",
    "1d": "1Day",
    "1w": "1Week",
    "1mo": "1Month",
}
_REQUIRED = {"t": "time", "o": "open", "h": "high", "l": "low", "c": "close", "v": "volume"}
_OPTIONAL = {"n": ("trades", pa.int64()), "vw": ("vwap", pa.float64())}
_STOCK_ZONE, _CRYPTO_ZONE = "America/New_York", "America/Chicago"


def is_crypto(symbol: str) -> bool:
    """Alpaca names crypto pairs with a slash: ``BTC/USD``."""
    return "/" in symbol


class AlpacaProvider(HttpProvider):
    """US stock and crypto bars from Alpaca (or a mirror at ``MARKETLAKE_ALPACA_URL``)."""

    name: ClassVar[str] = "alpaca"
    timeframes: ClassVar[tuple[str, ...]] = tuple(_TIMEFRAMES)
    requests_per_minute: ClassVar[int] = 200
    base_url_setting: ClassVar[str] = "alpaca_url"
    page_limit: ClassVar[int] = 10_000

    async def fetch_bars(
        self, symbol: str, timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> AsyncGenerator[pa.Table, None]:
        symbol = symbol.upper()
        if is_crypto(symbol):
            pages = self.fetch_bars_multi([symbol], timeframe, start, end)
        else:
            pages = self._pages(f"/v2/stocks/{symbol}/bars", {}, timeframe, start, end, symbol)
        async for table in pages:
            yield table

    async def fetch_bars_multi(
        self, symbols: Sequence[str], timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> AsyncGenerator[pa.Table, None]:
        """Bars of several stocks, or several crypto pairs, one table per page."""
        names = [s.upper() for s in symbols]
        kinds = {is_crypto(s) for s in names}
        if len(kinds) != 1:
            raise InputError(
                "alpaca serves stocks and crypto pairs on different endpoints; "
                "ingest them in separate jobs",
                param="symbols",
            )
        path = "/v1beta3/crypto/us/bars" if kinds == {True} else "/v2/stocks/bars"
        async for table in self._pages(
            path, {"symbols": ",".join(names)}, timeframe, start, end, ",".join(names)
        ):
            yield table

    async def _pages(
        self,
        path: str,
        extra: Params,
        timeframe: str | Timeframe,
        start: datetime,
        end: datetime,
        label: str,
    ) -> AsyncGenerator[pa.Table, None]:
        tf = self.check_timeframe(timeframe)
        crypto = path.startswith("/v1beta3/crypto")
        params: dict[str, str | int | float] = {
            **extra,
            "timeframe": _TIMEFRAMES[str(tf)],
            "start": _rfc3339(start),
            "end": _rfc3339(end),
            "limit": self.page_limit,
        }
        if not crypto:
            if not self.headers():
                raise ConfigError(
                    "alpaca stock bars need an API key: set MARKETLAKE_ALPACA_KEY_ID and "
                    "MARKETLAKE_ALPACA_SECRET_KEY (crypto pairs such as BTC/USD need none)"
                )
            params.update(feed=self.settings.alpaca_feed, adjustment="raw")
        while True:
            payload = await self.get_json(path, params, symbol=label)
            table = _parse_bars(payload, label, str(tf))
            if not tf.is_intraday and table.num_rows:
                zone = _CRYPTO_ZONE if crypto else _STOCK_ZONE
                labels = session_labels(table.column("ts").combine_chunks(), zone, tf)
                table = table.set_column(2, BAR_SCHEMA.field("ts"), labels)
            if table.num_rows:
                yield table
            token = payload.get("next_page_token")
            if not token:
                return
            params["page_token"] = str(token)

    def headers(self) -> dict[str, str]:
        key, secret = self.settings.alpaca_key_id, self.settings.alpaca_secret_key
        if key is None or secret is None:
            return {}
        return {
            "APCA-API-KEY-ID": key.get_secret_value(),
            "APCA-API-SECRET-KEY": secret.get_secret_value(),
        }

    async def describe(self, symbol: str) -> Instrument | None:
        symbol = symbol.upper()
        if is_crypto(symbol):
            return Instrument(
                symbol=symbol,
                name=symbol,
                asset_class="crypto",
                exchange="ALPACA",
                currency=symbol.split("/")[1],
                timezone="UTC",
            )
        return Instrument(symbol=symbol, asset_class="stock", currency="USD", timezone=_STOCK_ZONE)

    def vendor_error(self, status: int, payload: Any, symbol: str) -> MarketLakeError:
        message = str(payload.get("message", payload)) if isinstance(payload, dict) else payload
        if message.startswith("invalid symbol"):
            bad = message.partition(":")[2].strip() or symbol
            return SymbolNotFoundError(f"no such symbol at alpaca: {bad} ({message})")
        if "subscription does not permit" in message:
            return InputError(
                f"alpaca: {message}; use the iex feed "
                "(MARKETLAKE_ALPACA_FEED=iex) or an older range"
            )
        if status in (400, 422):
            return InputError(f"alpaca rejected the request for {symbol}: {message}")
        return ProviderError(f"alpaca answered HTTP {status} for {symbol}: {message}")


def _rfc3339(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _parse_bars(payload: Any, label: str, timeframe: str) -> pa.Table:
    """A bars answer (single-symbol list or per-symbol mapping) → canonical bars."""
    if not isinstance(payload, dict) or "bars" not in payload:
        raise ProviderError(f"alpaca answer for {label} has no 'bars' field")
    bars = payload["bars"] or []
    if isinstance(bars, list):
        groups = {str(payload.get("symbol") or label): bars}
    elif isinstance(bars, dict):
        groups = {str(symbol): items or [] for symbol, items in bars.items()}
    else:
        raise ProviderError(f"alpaca 'bars' for {label} is a {type(bars).__name__}")
    tables = [
        _parse_symbol_bars(items, symbol.upper(), timeframe)
        for symbol, items in sorted(groups.items())
        if items
    ]
    return pa.concat_tables(tables) if tables else BAR_SCHEMA.empty_table()


def _parse_symbol_bars(items: list[Any], symbol: str, timeframe: str) -> pa.Table:
    try:
        struct = pa.array(items)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ProviderError(f"alpaca bars of {symbol} are not uniform objects: {exc}") from None
    if not pa.types.is_struct(struct.type):
        raise ProviderError(f"alpaca bars of {symbol} should be objects, got {struct.type}")
    fields = {struct.type.field(i).name: struct.field(i) for i in range(struct.type.num_fields)}
    for key, meaning in _REQUIRED.items():
        if key not in fields or fields[key].null_count:
            raise ProviderError(
                f"alpaca bar of {symbol} lacks field {key!r} ({meaning}); "
                "the response format changed"
            )
    n = len(items)
    columns: dict[str, Any] = {
        "symbol": pa.array([symbol] * n, pa.string()),
        "timeframe": pa.array([timeframe] * n, pa.string()),
        "ts": _cast(fields["t"], TS_TYPE, "t", symbol),
        **{
            name: _cast(fields[key], pa.float64(), key, symbol)
            for key, name in (
                ("o", "open"),
                ("h", "high"),
                ("l", "low"),
                ("c", "close"),
                ("v", "volume"),
            )
        },
    }
    for key, (name, typ) in _OPTIONAL.items():
        columns[name] = _cast(fields[key], typ, key, symbol) if key in fields else pa.nulls(n, typ)
    columns["source"] = pa.array(["alpaca"] * n, pa.string())
    return pa.table(columns, schema=BAR_SCHEMA)


def _cast(column: pa.Array, typ: pa.DataType, key: str, symbol: str) -> pa.Array:
    try:
        return pc.cast(column, typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ProviderError(f"alpaca bar field {key!r} of {symbol} cannot be read: {exc}") from None
