"""Alembic environment of the PostgreSQL store.

MarketLake runs migrations programmatically (``marketlake migrate``, see
:mod:`marketlake.store.pgmigrate`), which passes an open connection, the target
schema and the TimescaleDB options in ``config.attributes``.
"""

from __future__ import annotations

from alembic import context

from marketlake.store.tables import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `marketlake migrate`, which passes the connection")


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Autogenerate compares the catalogue only; Alembic's own table is not part of it."""
    return not (type_ == "table" and name == "alembic_version")


context.configure(
    connection=connection,
    include_name=_include_name,
    target_metadata=metadata,
    version_table_schema=config.attributes.get("schema", "public"),
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
