"""``marketlake migrate``: create or upgrade the store's tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from marketlake.cli.app import state
from marketlake.cli.output import redact, show_table

if TYPE_CHECKING:
    from marketlake.config import Settings
    from marketlake.store.pgschema import TimescaleOptions


def timescale_options(settings: Settings) -> TimescaleOptions:
    """The TimescaleDB layout the settings ask for."""
    from marketlake.store.pgschema import TimescaleOptions

    compress = settings.timescale_compress_after
    return TimescaleOptions(
        chunk_interval=settings.timescale_chunk_interval,
        compress_after=None if compress.strip().lower() in ("never", "off") else compress,
        retention=settings.timescale_retention,
    )


def migrate(
    ctx: typer.Context,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Only report the schema version; exit 1 if a migration is due."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create or upgrade the store's tables to this MarketLake's schema version (idempotent).

    On PostgreSQL this applies the Alembic migrations; bars and trades become
    TimescaleDB hypertables when the extension is available (MARKETLAKE_TIMESCALE),
    monthly partitions otherwise. The embedded DuckDB store migrates itself on open.

    Example: `marketlake --store postgresql://postgres@localhost/marketlake migrate`
    """
    from marketlake.store import is_postgres
    from marketlake.store.catalogue import SCHEMA_VERSION

    st = state(ctx)
    uri = st.settings.store
    if not is_postgres(uri):
        version = st.store.schema_version()
        row = {"store": uri, "before": version, "after": version, "layout": "duckdb"}
    else:
        from marketlake.store import pgmigrate

        if check:
            version = pgmigrate.current_version(uri)
            row = {"store": uri, "before": version, "after": version, "layout": "postgresql"}
        else:
            report = pgmigrate.migrate(
                uri,
                timescale=st.settings.timescale,
                timescale_options=timescale_options(st.settings),
            )
            layout = "timescaledb hypertables" if report.timescale else "monthly partitions"
            row = {"store": uri, "before": report.before, "after": report.after, "layout": layout}
    row["store"] = redact(str(row["store"]))
    row["target"] = SCHEMA_VERSION
    show_table(
        [row],
        ("store", "before", "after", "target", "layout"),
        title="migrate",
        as_json=as_json,
        numeric=("before", "after", "target"),
    )
    if check and row["after"] != SCHEMA_VERSION:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("migrate")(migrate)
