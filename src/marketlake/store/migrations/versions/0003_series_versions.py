"""Series versions: a counter per (symbol, timeframe) that every bar write bumps.

The API's bar cache compares the versions of the series it holds with one small
query (at most every ``MARKETLAKE_API_CACHE_CHECK_MS``) instead of reloading
them on a timer. A series without a row has version 0, so no backfill is needed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "series_versions",
        sa.Column("symbol", sa.String(collation="C"), nullable=False),
        sa.Column("timeframe", sa.String(collation="C"), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("symbol", "timeframe"),
    )


def downgrade() -> None:
    op.drop_table("series_versions")
