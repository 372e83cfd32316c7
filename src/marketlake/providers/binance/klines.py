"""Binance klines: the one kline schema and parser, for every path that reads them.

Binance sends a kline two ways:

* **REST** (``GET /api/v3/klines``): a JSON array of 12-field arrays, in the order of
  :data:`FIELDS` (prices and volumes as decimal strings, times in ms, the trade count as
  an integer). :func:`read_plain_klines` reads pages in Binance's plain layout as one
  Arrow CSV read (about twice as fast as a JSON parse); :func:`parse_klines` reads
  anything else, or says what is wrong with it.
* **websocket** (``<symbol>@kline_<interval>``): an object under ``"k"`` with the same
  fields under one-letter keys (``t`` open time, ``o``, ``h``, ``l``, ``c``, ``v``, ``T``
  close time, ``q`` quote volume, ``n`` trades, ``V``, ``Q``, ``B``) and ``s`` (symbol),
  ``i`` (interval), ``x`` (closed); :func:`parse_kline_event` reads one.

The REST provider (:mod:`marketlake.providers.binance.rest`), the live feed and its
backfill after a reconnect (:mod:`marketlake.stream.binance`, which fetches through the
REST provider) all use this module, so a kline becomes the same canonical bar on every
path: ``ts`` = open time, ``trades`` = number of trades, ``vwap`` = quote volume / volume,
and **null when the volume is 0** (no trade, so no volume-weighted price; roll-ups count
such a bar at its close, as for any bar without a vwap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from marketlake.errors import ProviderError
from marketlake.schema import BAR_SCHEMA, TS_TYPE, constant_column

SOURCE = "binance"
FIELDS = (
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
"""The fields of a REST kline array, in order; further fields are ignored."""
_FLOAT, _INT, _TEXT = pa.float64(), pa.int64(), pa.string()


def vwap_column(quote_volume: pa.Array, volume: pa.Array) -> pa.Array:
    """Quote volume / volume, null where the volume is 0."""
    return pc.if_else(
        pc.greater(volume, 0.0), pc.divide(quote_volume, volume), pa.scalar(None, _FLOAT)
    )


def kline_vwap(quote_volume: float, volume: float) -> float | None:
    """:func:`vwap_column` for one kline."""
    return quote_volume / volume if volume > 0 else None


# -- REST: arrays of 12 fields ----------------------------------------------------------

_CSV_NAMES = ["lead", *(f"f{i}" for i in range(len(FIELDS)))]
_CSV_TYPES = {"f0": _INT, "f8": _INT, **{f"f{i}": _FLOAT for i in (1, 2, 3, 4, 5, 7)}}
_CSV_READ = pa_csv.ReadOptions(column_names=_CSV_NAMES, use_threads=False)
_CSV_CONVERT = pa_csv.ConvertOptions(
    column_types=_CSV_TYPES,
    include_columns=list(_CSV_TYPES),
    null_values=[],
    strings_can_be_null=False,
)
_ROWS = bytes.maketrans(b"]", b"\n")


def page_extent(body: bytes) -> tuple[int, int] | None:
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


def read_plain_klines(bodies: Sequence[bytes], symbol: str, timeframe: str) -> pa.Table | None:
    """Klines straight from the bodies of pages when each has Binance's plain layout,
    ``[[...],[...]]`` with exactly 12 fields per kline (the 8 it takes are numbers or
    decimal strings) and nothing else; None otherwise.

    The rows of all pages are read as one CSV by Arrow (which runs without the GIL);
    anything unusual (spaces, nulls, extra fields, cut or malformed bodies) is left to
    :func:`parse_klines`. Every ``],[`` becomes a line break followed by a comma (so each
    line has an empty lead field).
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
    return klines_table(symbol, timeframe, *columns)


def parse_klines(payload: Any, symbol: str, timeframe: str) -> pa.Table:
    """Decoded kline arrays → canonical bars; fields beyond the 12th are ignored. Anything
    else raises a :class:`ProviderError` that says what is wrong."""
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
    if width < len(FIELDS):
        row = next(i for i, r in enumerate(payload) if not isinstance(r, list) or len(r) == width)
        raise ProviderError(
            f"binance kline {row} of {symbol} has {width} fields; expected 12 "
            f"({', '.join(FIELDS)}) — the response format changed or was cut"
        )
    columns = list(zip(*payload, strict=False))
    prices = [_numbers(columns[i], FIELDS[i], symbol) for i in (1, 2, 3, 4, 5, 7)]
    return klines_table(
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


def klines_table(
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
            "vwap": vwap_column(quote_volume, volume),
            "source": constant_column(SOURCE, n),
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


# -- websocket: one kline object per message ------------------------------------------


class KlineEvent(NamedTuple):
    """One websocket kline: where it belongs, then the values of its bar (``BAR_VALUES``)."""

    symbol: str
    interval: str
    final: bool
    ts: int
    """Open time, epoch µs."""
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int
    vwap: float | None


BAR_VALUES = ("ts", "open", "high", "low", "close", "volume", "trades", "vwap")
"""The fields of a :class:`KlineEvent` that make its bar, in the order of the tuple's tail."""


def parse_kline_event(k: Mapping[str, Any]) -> KlineEvent:
    """The ``"k"`` object of a websocket kline message. Raises ``KeyError``, ``TypeError``
    or ``ValueError`` on a malformed one (missing fields, prices that are not numbers or
    contradict each other), which the feed counts and skips."""
    o, h, low, c, v = (float(k[x]) for x in ("o", "h", "l", "c", "v"))
    if not (0 < low <= min(o, c) and max(o, c) <= h and v >= 0):
        raise ValueError(f"kline prices o={o} h={h} l={low} c={c} v={v} are inconsistent")
    return KlineEvent(
        str(k["s"]).upper(),
        str(k["i"]),
        bool(k["x"]),
        int(k["t"]) * 1000,
        o,
        h,
        low,
        c,
        v,
        int(k["n"]),
        kline_vwap(float(k["q"]), v),
    )
