"""Canonical data: timeframes, instruments and the Arrow schemas of bars and trades.

Bars and trades move between components as Arrow tables in the schemas below.
``normalize_bars`` and ``normalize_trades`` turn whatever a provider or a file
produced into exactly those schemas, with UTC timestamps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, field_validator

from marketlake.errors import InputError, SchemaError, TimeframeError

US_PER_SECOND = 1_000_000
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TIMEFRAME_RE = re.compile(r"^([1-9][0-9]*)(m|h|d|w|mo)$")
# 1970-01-01 was a Thursday; weekly buckets start on Monday 1970-01-05.
_WEEK_OFFSET_US = 4 * 86400 * US_PER_SECOND
STANDARD_TIMEFRAMES = ("1m", "5m", "15m", "30m", "1h", "4h", "1d", "1w", "1mo")


@dataclass(frozen=True, slots=True)
class Timeframe:
    """A bar length such as ``5m``; ``unit`` is one of m, h, d, w, mo."""

    count: int
    unit: str

    @classmethod
    def parse(cls, text: str | Timeframe) -> Timeframe:
        """Parse ``'5m'``, ``'1h'``, ``'1d'``, ``'1w'``, ``'1mo'`` or any ``N{m,h,d}``."""
        if isinstance(text, Timeframe):
            return text
        match = _TIMEFRAME_RE.match(str(text).strip())
        if match is None or (match.group(2) in ("w", "mo") and match.group(1) != "1"):
            raise TimeframeError(
                f"unknown timeframe {text!r}: use N followed by m, h or d (for example "
                f"1m, 5m, 15m, 1h, 4h, 1d), or 1w or 1mo",
                param="timeframe",
            )
        return cls(int(match.group(1)), match.group(2))

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"

    @property
    def is_calendar(self) -> bool:
        """Monthly bars have no fixed length."""
        return self.unit == "mo"

    @property
    def is_intraday(self) -> bool:
        return self.unit in ("m", "h")

    @property
    def seconds(self) -> int:
        """Length in seconds; monthly bars have none and raise."""
        if self.is_calendar:
            raise TimeframeError("1mo has no fixed length in seconds", param="timeframe")
        return self.count * _UNIT_SECONDS[self.unit]

    @property
    def micros(self) -> int:
        return self.seconds * US_PER_SECOND

    def floor_us(self, ts_us: np.ndarray[Any, np.dtype[np.int64]]) -> np.ndarray[Any, Any]:
        """Floor epoch microseconds to the start of their bucket (UTC)."""
        if self.unit == "mo":
            months = ts_us.astype("datetime64[us]").astype("datetime64[M]")
            return months.astype("datetime64[us]").astype(np.int64)
        step = self.micros
        if self.unit == "w":
            return ((ts_us - _WEEK_OFFSET_US) // step) * step + _WEEK_OFFSET_US
        return (ts_us // step) * step

    def floor(self, ts: datetime) -> datetime:
        """Floor one aware datetime to the start of its bucket."""
        us = np.array([_to_epoch_us(ts)], dtype=np.int64)
        return datetime.fromtimestamp(int(self.floor_us(us)[0]) / US_PER_SECOND, tz=UTC)

    def next_start(self, ts: datetime) -> datetime:
        """The start of the bucket after the one holding ``ts``."""
        start = self.floor(ts)
        if self.unit == "mo":
            year, month = (
                (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
            )
            return start.replace(year=year, month=month)
        return datetime.fromtimestamp((_to_epoch_us(start) + self.micros) / US_PER_SECOND, tz=UTC)

    def is_aligned(self, ts_us: np.ndarray[Any, np.dtype[np.int64]]) -> np.ndarray[Any, Any]:
        """True where a timestamp is the start of its bucket."""
        return np.asarray(self.floor_us(ts_us) == ts_us)


def parse_timeframe(text: str | Timeframe) -> Timeframe:
    """Parse a timeframe string; see :meth:`Timeframe.parse`."""
    return Timeframe.parse(text)


def _to_epoch_us(ts: datetime) -> int:
    if ts.tzinfo is None:
        raise SchemaError(f"timestamp {ts.isoformat()} has no timezone; pass an aware datetime")
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * US_PER_SECOND + delta.microseconds


def to_epoch_us(ts: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    return _to_epoch_us(ts)


def from_epoch_us(us: int) -> datetime:
    """Aware UTC datetime from microseconds since the epoch."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


_SPACE_OFFSET = re.compile(r"\d \d{2}(:?\d{2})?$")


def parse_time(text: str | datetime, *, param: str = "time") -> datetime:
    """Parse an ISO date or datetime; a date alone means 00:00 UTC, naive means UTC."""
    if isinstance(text, datetime):
        value = text
    else:
        try:
            value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            # A `+` of an offset sent unencoded in a URL query arrives as a space.
            hint = (
                "; in a URL, encode the '+' of an offset as %2B (…T10:00:00%2B01:00)"
                if _SPACE_OFFSET.search(text)
                else ""
            )
            raise InputError(
                f"{param} {text!r} is not an ISO date or datetime; use 2024-03-04 or "
                f"2024-03-04T14:30:00Z{hint}",
                param=param,
            ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


AssetClass = Literal["stock", "index", "crypto", "fx", "etf", "future"]
_SYMBOL_RE = re.compile(r"^[A-Z0-9^._=\-/]{1,32}$")
_SYMBOL_RULE = (
    "must be 1-32 characters of A-Z, 0-9 and ^ . _ = - /, with no path syntax"
    " ('..', a leading or trailing '/', '//')"
)


def _symbol_problem(symbol: str) -> bool:
    """True when an upper-cased symbol breaks the rule: bad characters or path syntax.

    ``/`` is allowed between two names (``BTC/USD``) but never so that the symbol could
    name a parent directory, an absolute path or an empty path segment.
    """
    if not _SYMBOL_RE.match(symbol):
        return True
    return ".." in symbol or symbol.startswith(("/", ".")) or symbol.endswith("/") or "//" in symbol


class Instrument(BaseModel):
    """A tradable or quoted thing; ``symbol`` is its unique upper-case key."""

    symbol: str = Field(examples=["AAPL"])
    name: str = Field("", max_length=200)
    asset_class: AssetClass = "stock"
    exchange: str = Field("", max_length=32)
    currency: str = Field("USD", max_length=16)
    timezone: str = Field("America/New_York", max_length=64)
    active: bool = True

    @field_validator("symbol", mode="before")
    @classmethod
    def _upper_symbol(cls, value: object) -> str:
        symbol = str(value).strip().upper()
        if _symbol_problem(symbol):
            raise ValueError(f"symbol {value!r} {_SYMBOL_RULE}")
        return symbol

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {value!r}, e.g. America/New_York") from None
        return value


def normalize_symbol(symbol: str) -> str:
    """Upper-case and check a symbol; a malformed one raises :class:`InputError`."""
    text = str(symbol).strip().upper()
    if _symbol_problem(text):
        raise InputError(f"symbol {symbol!r} {_SYMBOL_RULE}", param="symbol")
    return text


CRYPTO_QUOTES = ("USDT", "USDC", "BUSD", "USD", "BTC", "ETH", "EUR")


def default_instrument(symbol: str) -> Instrument:
    """Sensible defaults for a symbol seen before it was registered."""
    symbol = normalize_symbol(symbol)
    is_crypto = symbol.endswith((*CRYPTO_QUOTES[:3], "-USD")) or "/" in symbol
    if is_crypto:
        return Instrument(
            symbol=symbol, asset_class="crypto", exchange="", currency="USD", timezone="UTC"
        )
    if symbol.startswith("^"):
        return Instrument(symbol=symbol, asset_class="index")
    return Instrument(symbol=symbol)


TS_TYPE = pa.timestamp("us", tz="UTC")

BAR_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("timeframe", pa.string(), nullable=False),
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=False),
        pa.field("trades", pa.int64()),
        pa.field("vwap", pa.float64()),
        pa.field("source", pa.string(), nullable=False),
    ]
)

TRADE_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("size", pa.float64(), nullable=False),
        pa.field("side", pa.string()),
        pa.field("trade_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)

BAR_VALUES = ("open", "high", "low", "close", "volume", "trades", "vwap")


def empty_bars() -> pa.Table:
    return BAR_SCHEMA.empty_table()


def _ts_to_utc(column: pa.ChunkedArray | pa.Array, name: str) -> pa.Array | pa.ChunkedArray:
    import pyarrow.compute as pc

    typ = column.type
    if pa.types.is_timestamp(typ):
        if typ.tz is None:
            raise SchemaError(
                f"column {name!r} holds naive timestamps; localize them (e.g. with --tz) "
                f"so MarketLake knows their timezone"
            )
        return pc.cast(column, TS_TYPE)
    if pa.types.is_integer(typ):
        return pc.cast(column, pa.int64()).cast(TS_TYPE)
    raise SchemaError(f"column {name!r} has type {typ}; expected a timestamp with a timezone")


def constant_column(value: str, n: int) -> pa.Array:
    """A string column holding ``value`` ``n`` times, built straight from its buffers."""
    data = value.encode()
    if len(data) * n >= 2**31:
        return pa.array([value] * n, pa.large_string()).cast(pa.string())
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(len(data))
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data * n))


def string_array(values: list[str]) -> pa.Array:
    """A string column of ``values`` built straight from its buffers: ``pa.array`` of Python
    objects imports pandas (about 0.3 s) to check whether they are pandas objects."""
    data = [value.encode() for value in values]
    offsets = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    if offsets[-1] >= 2**31:
        return pa.array(values, pa.large_string()).cast(pa.string())
    buffers = [pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(data))]
    return pa.StringArray.from_buffers(len(data), *buffers)


def normalize_bars(
    table: pa.Table,
    *,
    symbol: str | None = None,
    timeframe: str | Timeframe | None = None,
    source: str | None = None,
) -> pa.Table:
    """Return ``table`` in :data:`BAR_SCHEMA`: fill constant columns, cast types, UTC times.

    Missing ``symbol``, ``timeframe`` or ``source`` columns are filled from the
    keyword arguments; ``trades`` and ``vwap`` may be absent (null). Raises
    :class:`SchemaError` naming the first column that cannot be made to fit.
    """
    import pyarrow.compute as pc

    n = table.num_rows
    names = set(table.column_names)
    columns: dict[str, Any] = {}
    fill = {"symbol": symbol, "timeframe": str(timeframe) if timeframe else None, "source": source}
    for field in BAR_SCHEMA:
        name = field.name
        if name in names:
            column = table.column(name)
            if name == "ts":
                columns[name] = _ts_to_utc(column, name)
                continue
            try:
                columns[name] = pc.cast(column, field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(
                    f"column {name!r} of type {column.type} cannot become {field.type}: {exc}"
                ) from None
        elif fill.get(name) is not None:
            columns[name] = constant_column(str(fill[name]), n)
        elif field.nullable:
            columns[name] = pa.nulls(n, field.type)
        else:
            raise SchemaError(
                f"bars need a {name!r} column (have: {', '.join(sorted(names)) or 'none'})"
            )
    if symbol is None and "symbol" in columns:
        columns["symbol"] = pc.utf8_upper(columns["symbol"])
    if "timeframe" in names:
        for tf in pc.unique(columns["timeframe"]).to_pylist():
            Timeframe.parse(tf)
    out = pa.table(columns)
    for name in ("symbol", "timeframe", "ts", "open", "high", "low", "close", "volume", "source"):
        if out.column(name).null_count:
            raise SchemaError(f"column {name!r} has {out.column(name).null_count} empty values")
    return out.cast(BAR_SCHEMA)


def normalize_trades(
    table: pa.Table, *, symbol: str | None = None, source: str | None = None
) -> pa.Table:
    """Return ``table`` in :data:`TRADE_SCHEMA` (see :func:`normalize_bars`)."""
    import pyarrow.compute as pc

    n = table.num_rows
    names = set(table.column_names)
    columns: dict[str, Any] = {}
    fill = {"symbol": symbol, "source": source}
    for field in TRADE_SCHEMA:
        name = field.name
        if name in names:
            column = table.column(name)
            columns[name] = (
                _ts_to_utc(column, name) if name == "ts" else pc.cast(column, field.type)
            )
        elif fill.get(name) is not None:
            columns[name] = constant_column(str(fill[name]), n)
        elif field.nullable:
            columns[name] = pa.nulls(n, field.type)
        else:
            raise SchemaError(f"trades need a {name!r} column")
    return pa.table(columns).cast(TRADE_SCHEMA)


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)
