"""PostgreSQL layout of bars and trades: monthly partitions or TimescaleDB hypertables.

Without TimescaleDB, ``bars`` and ``trades`` are range-partitioned by month on
``ts`` (one partition per calendar month, created on demand by the writer) with
a BRIN index on ``ts`` and a unique B-tree key. With TimescaleDB they become
hypertables with time chunks, compression segmented by symbol after a
configurable age, an optional retention policy, and continuous aggregates that
keep the standard roll-ups of the 1-minute bars up to date.

Everything here only *generates* SQL, so it is unit-tested without a server;
the Alembic revisions under ``store/migrations`` and the store execute it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np

from marketlake.errors import ConfigError

PARTITIONED = ("bars", "trades")
_INTERVAL_RE = re.compile(r"^\s*(\d+)\s*(minutes?|hours?|days?|weeks?|months?|years?)\s*$")

# Roll-ups served by continuous aggregates: timeframe -> time_bucket width.
CAGG_BUCKETS: dict[str, str] = {
    "5m": "5 minutes",
    "15m": "15 minutes",
    "30m": "30 minutes",
    "1h": "1 hour",
    "4h": "4 hours",
    "1d": "1 day",
}


def check_interval(text: str, setting: str) -> str:
    """Validate a PostgreSQL interval such as ``7 days``; return it normalised."""
    match = _INTERVAL_RE.match(text)
    if match is None or int(match.group(1)) == 0:
        raise ConfigError(
            f"{setting} {text!r} is not an interval: use a positive count and a unit, "
            "e.g. '7 days', '12 hours' or '1 month'"
        )
    return f"{int(match.group(1))} {match.group(2)}"


@dataclass(frozen=True, slots=True)
class TimescaleOptions:
    """How bars and trades are laid out when TimescaleDB is present."""

    chunk_interval: str = "7 days"
    compress_after: str | None = "30 days"
    retention: str | None = None
    continuous_aggregates: tuple[str, ...] = field(default=tuple(CAGG_BUCKETS))

    def __post_init__(self) -> None:
        check_interval(self.chunk_interval, "MARKETLAKE_TIMESCALE_CHUNK_INTERVAL")
        if self.compress_after is not None:
            check_interval(self.compress_after, "MARKETLAKE_TIMESCALE_COMPRESS_AFTER")
        if self.retention is not None:
            check_interval(self.retention, "MARKETLAKE_TIMESCALE_RETENTION")
        unknown = [tf for tf in self.continuous_aggregates if tf not in CAGG_BUCKETS]
        if unknown:
            raise ConfigError(
                f"no continuous aggregate for timeframe(s) {', '.join(unknown)}; "
                f"choose from {', '.join(CAGG_BUCKETS)}"
            )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def hypertable_ddl(table: str, segment_by: str, options: TimescaleOptions) -> list[str]:
    """Statements that turn an empty ``table`` into a compressed hypertable."""
    statements = [
        f"SELECT create_hypertable({_quote(table)}, 'ts', "
        f"chunk_time_interval => INTERVAL {_quote(options.chunk_interval)}, "
        "if_not_exists => TRUE)",
    ]
    if options.compress_after is not None:
        statements += [
            f"ALTER TABLE {table} SET (timescaledb.compress, "
            f"timescaledb.compress_segmentby = {_quote(segment_by)}, "
            "timescaledb.compress_orderby = 'ts')",
            f"SELECT add_compression_policy({_quote(table)}, "
            f"INTERVAL {_quote(options.compress_after)}, if_not_exists => TRUE)",
        ]
    if options.retention is not None:
        statements.append(
            f"SELECT add_retention_policy({_quote(table)}, INTERVAL {_quote(options.retention)}, "
            "if_not_exists => TRUE)"
        )
    return statements


def continuous_aggregate_ddl(timeframe: str) -> list[str]:
    """A continuous aggregate ``bars_<timeframe>`` rolling 1-minute bars up, and its policy.

    Open and close come from ``first``/``last`` by time, ``vwap`` is the
    volume-weighted mean of the 1-minute vwaps, ``trades`` their sum.
    """
    bucket = CAGG_BUCKETS[timeframe]
    view = f"bars_{timeframe}"
    select = (
        f"SELECT symbol, {_quote(timeframe)}::text AS timeframe, "
        f"time_bucket(INTERVAL {_quote(bucket)}, ts) AS ts, "
        "first(open, ts) AS open, max(high) AS high, min(low) AS low, "
        "last(close, ts) AS close, sum(volume) AS volume, sum(trades)::bigint AS trades, "
        "sum(vwap * volume) / NULLIF(sum(volume), 0) AS vwap, 'cagg'::text AS source "
        "FROM bars WHERE timeframe = '1m' "
        f"GROUP BY symbol, time_bucket(INTERVAL {_quote(bucket)}, ts)"
    )
    return [
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view} "
        f"WITH (timescaledb.continuous) AS {select} WITH NO DATA",
        f"SELECT add_continuous_aggregate_policy({_quote(view)}, "
        f"start_offset => INTERVAL '3 days', end_offset => INTERVAL {_quote(bucket)}, "
        f"schedule_interval => INTERVAL {_quote(bucket)}, if_not_exists => TRUE)",
    ]


def timescale_ddl(options: TimescaleOptions) -> list[str]:
    """Everything that makes the freshly created bars and trades tables Timescale ones."""
    statements = ["CREATE EXTENSION IF NOT EXISTS timescaledb"]
    statements += hypertable_ddl("bars", "symbol, timeframe", options)
    statements += hypertable_ddl("trades", "symbol", options)
    for timeframe in options.continuous_aggregates:
        statements += continuous_aggregate_ddl(timeframe)
    return statements


def timescale_drop_ddl(options: TimescaleOptions) -> list[str]:
    """Statements that undo the continuous aggregates (tables are dropped afterwards)."""
    return [f"DROP MATERIALIZED VIEW IF EXISTS bars_{tf}" for tf in options.continuous_aggregates]


# -- monthly partitions ------------------------------------------------------------------


def partition_name(table: str, month: date) -> str:
    """``bars_p2024_03`` for March 2024."""
    return f"{table}_p{month.year:04d}_{month.month:02d}"


def next_month(month: date) -> date:
    return date(month.year + 1, 1, 1) if month.month == 12 else date(month.year, month.month + 1, 1)


def partition_ddl(table: str, month: date) -> list[str]:
    """Statements that add the partition of ``table`` holding ``month`` (UTC).

    The partition is created on its own and then attached: ``ATTACH PARTITION``
    takes a lock that does not conflict with readers and writers of the table,
    where ``CREATE TABLE ... PARTITION OF`` would wait for (and block) them all.
    """
    if table not in PARTITIONED:
        raise ValueError(f"{table} is not partitioned")
    lo, hi = month.replace(day=1), next_month(month)
    name = partition_name(table, lo)
    return [
        f"CREATE TABLE IF NOT EXISTS {name} (LIKE {table} INCLUDING ALL)",
        f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM "
        f"('{lo.isoformat()} 00:00:00+00') TO ('{hi.isoformat()} 00:00:00+00')",
    ]


def months_of(ts_us: np.ndarray[Any, Any]) -> list[date]:
    """The distinct UTC calendar months of epoch-microsecond timestamps, ascending."""
    if len(ts_us) == 0:
        return []
    months = np.unique(ts_us.astype("datetime64[us]").astype("datetime64[M]"))
    return [date.fromisoformat(f"{m}-01") for m in months.astype(str)]
