"""Alembic migrations of the PostgreSQL store, run from code (``marketlake migrate``).

Revisions live in ``store/migrations/versions`` and are numbered like the
catalogue's :data:`~marketlake.store.tables.SCHEMA_VERSION` (revision ``0001``
is schema version 1). Concurrent ``migrate`` runs against one database queue
on an advisory lock, so starting several API processes that each migrate is
safe. Whether bars and trades become TimescaleDB hypertables is decided when
they are created: ``timescale="auto"`` uses the extension when the server
offers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from marketlake.errors import ConfigError, StoreError, StoreVersionError
from marketlake.store.pgconn import PgOptions, parse_uri, probe, version_of
from marketlake.store.pgschema import TimescaleOptions

SCRIPT_LOCATION = "marketlake.store:migrations"
TimescaleMode = Literal["auto", "on", "off"]


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What ``migrate`` found and did."""

    schema: str
    before: int
    after: int
    timescale: bool
    timescale_available: bool

    @property
    def changed(self) -> bool:
        return self.before != self.after


def alembic_config(
    connection: Connection | None = None,
    schema: str = "public",
    timescale: TimescaleOptions | None = None,
) -> Config:
    """An Alembic configuration for MarketLake's revisions (no ``alembic.ini`` needed)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    config.attributes["schema"] = schema
    config.attributes["timescale"] = timescale
    return config


def head_version() -> int:
    """The schema version of the newest revision shipped with this MarketLake."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return int(head or 0)


def _revision(connection: Connection, schema: str) -> int:
    context = MigrationContext.configure(connection, opts={"version_table_schema": schema})
    current = context.get_current_revision()
    return int(current) if current else 0


def current_version(uri: str) -> int:
    """The schema version the store at ``uri`` holds now (0: not migrated)."""
    options = parse_uri(uri)
    with probe(options) as connection:
        return version_of(connection, options.schema)


def _timescale_available(connection: Connection) -> bool:
    found = connection.execute(
        text("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    ).scalar()
    return bool(found)


def _decide(mode: TimescaleMode, available: bool, options: PgOptions) -> bool:
    if mode == "on" and not available:
        raise ConfigError(
            f"MARKETLAKE_TIMESCALE=on but PostgreSQL at {options.where} has no timescaledb "
            "extension: install it, or set MARKETLAKE_TIMESCALE=auto to use monthly partitions"
        )
    return mode != "off" and available


def migrate(
    uri: str,
    *,
    timescale: TimescaleMode = "auto",
    timescale_options: TimescaleOptions | None = None,
    revision: str = "head",
) -> MigrationReport:
    """Bring the store at ``uri`` to ``revision`` (default: the newest); idempotent."""
    options = parse_uri(uri)

    def connect() -> psycopg.Connection[Any]:
        return probe(options)

    engine = create_engine("postgresql+psycopg://", creator=connect, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                {"key": f"marketlake:migrate:{options.schema}"},
            )
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{options.schema}"'))
            available = _timescale_available(connection)
            before = _revision(connection, options.schema)
            if before > head_version():
                raise StoreVersionError(
                    f"schema {options.schema} of {options.display} has schema version {before}, "
                    f"newer than this MarketLake's {head_version()}: upgrade MarketLake"
                )
            use = (
                _decide(timescale, available, options)
                if before == 0
                else _is_timescale(connection, options.schema)
            )
            layout = (timescale_options or TimescaleOptions()) if use else None
            command.upgrade(alembic_config(connection, options.schema, layout), revision)
            after = _revision(connection, options.schema)
    except psycopg.Error as exc:
        raise StoreError(f"migrating {options.display} failed: {exc}") from exc
    finally:
        engine.dispose()
    return MigrationReport(options.schema, before, after, use, available)


def _is_timescale(connection: Connection, schema: str) -> bool:
    """Whether the existing bars table is a hypertable (later revisions keep the layout)."""
    if (
        connection.execute(
            text("SELECT to_regclass('timescaledb_information.hypertables')")
        ).scalar()
        is None
    ):
        return False
    found = connection.execute(
        text(
            "SELECT count(*) FROM timescaledb_information.hypertables "
            "WHERE hypertable_schema = :schema AND hypertable_name = 'bars'"
        ),
        {"schema": schema},
    ).scalar()
    return bool(found)
