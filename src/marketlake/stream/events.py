"""What travels on the bus: batches of canonical trades or bars, and their wire format.

The raw topic carries :class:`Batch` objects: the trades (``TRADE_SCHEMA``) or
bars (``BAR_SCHEMA``) of *one* symbol as one Arrow table, so a bus entry holds
many events and is still acknowledged as a unit after every event in it was
processed. On Redis a batch is an Arrow IPC stream (zero-copy to decode); the
``metrics`` and ``alerts`` topics carry small JSON objects.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import pyarrow as pa

from marketlake.errors import SchemaError
from marketlake.schema import BAR_SCHEMA, TRADE_SCHEMA

RAW_TOPIC = "market-data-raw"
METRICS_TOPIC = "metrics"
ALERTS_TOPIC = "alerts"
TOPICS = (RAW_TOPIC, METRICS_TOPIC, ALERTS_TOPIC)

Kind = Literal["trade", "bar"]
Role = Literal["live", "backfill", "replay"]


def now_us() -> int:
    """Wall-clock time in epoch microseconds (publish stamps, latency)."""
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class Batch:
    """Trades or bars of one symbol, as one canonical Arrow table.

    ``role`` says where the rows come from: ``live`` (the websocket),
    ``backfill`` (REST klines fetched after a reconnect) or ``replay``.
    ``final`` marks bars that are complete (a closed kline); in-progress kline
    updates are ``final=False``. ``published_us`` is stamped on publish.
    """

    kind: Kind
    symbol: str
    table: pa.Table
    role: Role = "live"
    final: bool = True
    published_us: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        schema = TRADE_SCHEMA if self.kind == "trade" else BAR_SCHEMA
        if not self.table.schema.equals(schema):
            raise SchemaError(f"a {self.kind} batch needs the canonical {self.kind} schema")

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def stamped(self) -> Batch:
        """A copy stamped with the current wall-clock time."""
        return Batch(self.kind, self.symbol, self.table, self.role, self.final, now_us())


def encode_batch(batch: Batch) -> bytes:
    """The Arrow IPC stream of a batch, with its attributes in the schema metadata."""
    meta = {
        b"kind": batch.kind.encode(),
        b"symbol": batch.symbol.encode(),
        b"role": batch.role.encode(),
        b"final": b"1" if batch.final else b"0",
        b"published_us": str(batch.published_us).encode(),
    }
    table = batch.table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def decode_batch(data: bytes) -> Batch:
    """Inverse of :func:`encode_batch`; a damaged entry raises :class:`SchemaError`."""
    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        meta = table.schema.metadata or {}
        kind = meta[b"kind"].decode()
        schema = TRADE_SCHEMA if kind == "trade" else BAR_SCHEMA
        return Batch(
            kind=kind,
            symbol=meta[b"symbol"].decode(),
            table=table.replace_schema_metadata(None).cast(schema),
            role=meta[b"role"].decode(),
            final=meta[b"final"] == b"1",
            published_us=int(meta[b"published_us"]),
        )
    except (pa.ArrowException, KeyError, ValueError) as exc:
        raise SchemaError(f"undecodable bus entry: {exc}") from None


def encode_json(data: dict[str, Any]) -> bytes:
    """Compact JSON for the metrics and alerts topics."""
    return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)


def decode_json(data: bytes) -> dict[str, Any]:
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise SchemaError("a metrics or alerts entry must be a JSON object")
    return value


def trades_table(
    symbol: str,
    ts_us: list[int],
    price: list[float],
    size: list[float],
    side: list[str | None],
    trade_id: list[str],
    source: str,
) -> pa.Table:
    """Canonical trades of one symbol from column lists (no per-row objects)."""
    n = len(ts_us)
    return pa.table(
        [
            pa.array([symbol] * n, pa.string()),
            pa.array(ts_us, TRADE_SCHEMA.field("ts").type),
            pa.array(price, pa.float64()),
            pa.array(size, pa.float64()),
            pa.array(side, pa.string()),
            pa.array(trade_id, pa.string()),
            pa.array([source] * n, pa.string()),
        ],
        schema=TRADE_SCHEMA,
    )


def bars_table(symbol: str, timeframe: str, source: str, columns: dict[str, list[Any]]) -> pa.Table:
    """Canonical bars of one symbol from column lists ``ts`` (µs), ``open`` … ``vwap``."""
    n = len(columns["ts"])
    arrays = [
        pa.array([symbol] * n, pa.string()),
        pa.array([timeframe] * n, pa.string()),
        pa.array(columns["ts"], BAR_SCHEMA.field("ts").type),
    ]
    arrays.extend(
        pa.array(columns[name], pa.float64()) for name in ("open", "high", "low", "close", "volume")
    )
    arrays.append(pa.array(columns["trades"], pa.int64()))
    arrays.append(pa.array(columns["vwap"], pa.float64()))
    arrays.append(pa.array([source] * n, pa.string()))
    return pa.table(arrays, schema=BAR_SCHEMA)
