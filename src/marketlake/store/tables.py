"""The table catalogue: every table MarketLake stores, defined once in SQLAlchemy Core.

The PostgreSQL backend creates them through Alembic migrations; the DuckDB
backend compiles the same definitions on open. Bars and trades carry no
primary key here: each backend enforces their keys its own fastest way
(an anti-join in DuckDB, a unique index in PostgreSQL).

Adding a table or a column: add it here and in :mod:`marketlake.store.catalogue`
(the plain names that commands use without importing SQLAlchemy), bump
:data:`SCHEMA_VERSION` there, and add an Alembic revision under
``store/migrations/versions``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from marketlake.store.catalogue import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "TABLES", "metadata"]

metadata = MetaData()


def _ts(name: str, nullable: bool = True) -> Column[datetime]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


instruments = Table(
    "instruments",
    metadata,
    Column("symbol", String, primary_key=True),
    Column("name", String, nullable=False, default=""),
    Column("asset_class", String, nullable=False),
    Column("exchange", String, nullable=False, default=""),
    Column("currency", String, nullable=False, default="USD"),
    Column("timezone", String, nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("auto_registered", Boolean, nullable=False, default=False),
    _ts("created_at"),
    _ts("updated_at"),
)

bars = Table(
    "bars",
    metadata,
    Column("symbol", String, nullable=False),
    Column("timeframe", String, nullable=False),
    _ts("ts", nullable=False),
    Column("open", Double(), nullable=False),
    Column("high", Double(), nullable=False),
    Column("low", Double(), nullable=False),
    Column("close", Double(), nullable=False),
    Column("volume", Double(), nullable=False),
    Column("trades", BigInteger),
    Column("vwap", Double()),
    Column("source", String, nullable=False),
)

# PostgreSQL: the unique keys are the database's guard against duplicates (the
# writer avoids them first), BRIN keeps time-range scans of partitions cheap.
# Partitioned tables need the partition key (ts) in every unique index.
Index("bars_key", bars.c.symbol, bars.c.timeframe, bars.c.ts, unique=True)
Index("bars_ts_brin", bars.c.ts, postgresql_using="brin")

trades = Table(
    "trades",
    metadata,
    Column("symbol", String, nullable=False),
    _ts("ts", nullable=False),
    Column("price", Double(), nullable=False),
    Column("size", Double(), nullable=False),
    Column("side", String),
    Column("trade_id", String, nullable=False),
    Column("source", String, nullable=False),
)

Index("trades_key", trades.c.source, trades.c.symbol, trades.c.trade_id, trades.c.ts, unique=True)
Index("trades_symbol_ts", trades.c.symbol, trades.c.ts)
Index("trades_ts_brin", trades.c.ts, postgresql_using="brin")

jobs = Table(
    "jobs",
    metadata,
    Column("id", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("status", String, nullable=False),  # pending | running | succeeded | failed | partial …
    Column("params", Text, nullable=False, default="{}"),  # JSON
    Column("summary", Text, nullable=False, default="{}"),  # JSON: per-symbol counts
    Column("error", Text),
    _ts("created_at"),
    _ts("started_at"),
    _ts("finished_at"),
    Column("owner", String),  # host:pid of the process running the job (schema 2)
    _ts("heartbeat_at"),  # refreshed while the owner runs the job (schema 2)
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("provider", String, nullable=False),
    Column("symbol", String, nullable=False),
    Column("timeframe", String, nullable=False),
    _ts("last_ts", nullable=False),
    Column("job_id", String),
    _ts("updated_at"),
    PrimaryKeyConstraint("provider", "symbol", "timeframe"),
)

corporate_actions = Table(
    "corporate_actions",
    metadata,
    Column("symbol", String, nullable=False),
    _ts("ts", nullable=False),
    Column("kind", String, nullable=False),  # split | dividend
    Column("value", Double(), nullable=False),  # split ratio or cash amount
    Column("source", String, nullable=False),
    PrimaryKeyConstraint("symbol", "ts", "kind"),
)

quality_reports = Table(
    "quality_reports",
    metadata,
    Column("id", String, primary_key=True),
    Column("job_id", String),
    Column("scope", Text, nullable=False, default="{}"),  # JSON: symbols, timeframe, range
    Column("summary", Text, nullable=False, default="{}"),  # JSON: counts per rule, scores
    _ts("created_at"),
)

quality_findings = Table(
    "quality_findings",
    metadata,
    Column("report_id", String, nullable=False),
    Column("rule", String, nullable=False),
    Column("severity", String, nullable=False),
    Column("symbol", String, nullable=False),
    Column("timeframe", String, nullable=False),
    _ts("ts"),
    _ts("end_ts"),
    Column("values", Text),  # JSON
    Column("message", Text, nullable=False),
)

metrics = Table(
    "metrics",
    metadata,
    Column("symbol", String, nullable=False),
    Column("name", String, nullable=False),
    _ts("ts", nullable=False),
    Column("value", Double()),
    PrimaryKeyConstraint("symbol", "name"),
)

# A counter per bar series, bumped in the transaction of every write of its bars (by
# the PostgreSQL store), so that caches in other processes see the change with one
# cheap query. The embedded store has no other writer and keeps it empty.
series_versions = Table(
    "series_versions",
    metadata,
    Column("symbol", String, nullable=False),
    Column("timeframe", String, nullable=False),
    Column("version", BigInteger, nullable=False),
    PrimaryKeyConstraint("symbol", "timeframe"),
)

alert_rules = Table(
    "alert_rules",
    metadata,
    Column("id", String, primary_key=True),
    Column("definition", Text, nullable=False),  # JSON
    _ts("created_at"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", String, primary_key=True),
    Column("rule_id", String, nullable=False),
    Column("symbol", String, nullable=False),
    _ts("ts", nullable=False),
    Column("kind", String, nullable=False),
    Column("value", Double()),
    Column("message", Text, nullable=False),
    Column("seq", Integer, nullable=False, default=0),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("prefix", String, nullable=False),
    Column("hash", String, nullable=False),
    Column("scopes", String, nullable=False),  # comma-separated: read,write,admin
    _ts("created_at"),
    _ts("revoked_at"),
)

backtests = Table(
    "backtests",
    metadata,
    Column("id", String, primary_key=True),
    Column("status", String, nullable=False),
    Column("params", Text, nullable=False),  # JSON
    Column("stats", Text),  # JSON
    Column("trades", Text),  # JSON
    Column("equity", Text),  # JSON
    Column("error", Text),
    _ts("created_at"),
    _ts("finished_at"),
)

TABLES = {table.name: table for table in metadata.sorted_tables}
