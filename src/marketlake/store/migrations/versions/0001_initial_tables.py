"""Initial tables: the catalogue of schema version 1.

Generated with Alembic autogenerate from ``store/tables.py``, then edited so
that bars and trades are partitioned by month on ``ts`` (with a BRIN index),
or become TimescaleDB hypertables when ``marketlake migrate`` decided so. Their
key text columns use the "C" collation: byte order, the same as the code point
order of the default UTF-8 collations, but compared with memcmp, which makes
index maintenance and index scans about twice as fast.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op

from marketlake.store.pgschema import TimescaleOptions, timescale_ddl, timescale_drop_ddl

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _timescale() -> TimescaleOptions | None:
    options = context.config.attributes.get("timescale")
    return options if isinstance(options, TimescaleOptions) else None


def _layout() -> dict[str, Any]:
    """Monthly range partitions, unless the table becomes a hypertable."""
    return {} if _timescale() is not None else {"postgresql_partition_by": "RANGE (ts)"}


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("rule_id", sa.String(), nullable=False),
        sa.Column("symbol", sa.String(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("prefix", sa.String(), nullable=False),
        sa.Column("hash", sa.String(), nullable=False),
        sa.Column("scopes", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "backtests",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("stats", sa.Text(), nullable=True),
        sa.Column("trades", sa.Text(), nullable=True),
        sa.Column("equity", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "bars",
        sa.Column("symbol", sa.String(collation="C"), nullable=False),
        sa.Column("timeframe", sa.String(collation="C"), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("open", sa.Double(), nullable=False),
        sa.Column("high", sa.Double(), nullable=False),
        sa.Column("low", sa.Double(), nullable=False),
        sa.Column("close", sa.Double(), nullable=False),
        sa.Column("volume", sa.Double(), nullable=False),
        sa.Column("trades", sa.BigInteger(), nullable=True),
        sa.Column("vwap", sa.Double(), nullable=True),
        sa.Column("source", sa.String(), nullable=False),
        **_layout(),
    )
    op.create_index("bars_key", "bars", ["symbol", "timeframe", "ts"], unique=True)
    if _timescale() is None:
        op.create_index("bars_ts_brin", "bars", ["ts"], unique=False, postgresql_using="brin")
    op.create_table(
        "checkpoints",
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("symbol", sa.String(), nullable=False),
        sa.Column("timeframe", sa.String(), nullable=False),
        sa.Column("last_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_id", sa.String(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("provider", "symbol", "timeframe"),
    )
    op.create_table(
        "corporate_actions",
        sa.Column("symbol", sa.String(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("symbol", "ts", "kind"),
    )
    op.create_table(
        "instruments",
        sa.Column("symbol", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("asset_class", sa.String(), nullable=False),
        sa.Column("exchange", sa.String(), nullable=False),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("timezone", sa.String(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("auto_registered", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("symbol"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "metrics",
        sa.Column("symbol", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("symbol", "name"),
    )
    op.create_table(
        "quality_findings",
        sa.Column("report_id", sa.String(), nullable=False),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("severity", sa.String(), nullable=False),
        sa.Column("symbol", sa.String(), nullable=False),
        sa.Column("timeframe", sa.String(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_ts", sa.DateTime(timezone=True), nullable=True),
        sa.Column("values", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
    )
    op.create_table(
        "quality_reports",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("job_id", sa.String(), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "trades",
        sa.Column("symbol", sa.String(collation="C"), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("price", sa.Double(), nullable=False),
        sa.Column("size", sa.Double(), nullable=False),
        sa.Column("side", sa.String(), nullable=True),
        sa.Column("trade_id", sa.String(collation="C"), nullable=False),
        sa.Column("source", sa.String(collation="C"), nullable=False),
        **_layout(),
    )
    op.create_index("trades_key", "trades", ["source", "symbol", "trade_id", "ts"], unique=True)
    op.create_index("trades_symbol_ts", "trades", ["symbol", "ts"], unique=False)
    if _timescale() is None:
        op.create_index("trades_ts_brin", "trades", ["ts"], unique=False, postgresql_using="brin")
    timescale = _timescale()
    if timescale is not None:
        for statement in timescale_ddl(timescale):
            op.execute(statement)


def downgrade() -> None:
    timescale = _timescale()
    if timescale is not None:
        for statement in timescale_drop_ddl(timescale):
            op.execute(statement)
    op.drop_table("trades")
    op.drop_table("quality_reports")
    op.drop_table("quality_findings")
    op.drop_table("metrics")
    op.drop_table("jobs")
    op.drop_table("instruments")
    op.drop_table("corporate_actions")
    op.drop_table("checkpoints")
    op.drop_table("bars")
    op.drop_table("backtests")
    op.drop_table("api_keys")
    op.drop_table("alerts")
    op.drop_table("alert_rules")
