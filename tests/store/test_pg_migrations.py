"""Alembic migrations: ``marketlake migrate`` builds the catalogue; stores refuse other versions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from marketlake.cli.app import cli
from marketlake.errors import ConfigError, StoreVersionError
from marketlake.store import open_store
from marketlake.store.pgconn import parse_uri, probe
from marketlake.store.pgmigrate import current_version, head_version, migrate
from marketlake.store.tables import SCHEMA_VERSION, metadata
from tests.conftest import PG

pytestmark = pytest.mark.postgres


def _sql(uri: str, statement: str) -> list[tuple[Any, ...]]:
    options = parse_uri(uri)
    with probe(options) as conn:
        cursor = conn.execute(statement)
        rows = cursor.fetchall() if cursor.description else []
        conn.commit()
        return rows


def test_the_newest_revision_is_the_catalogue_version() -> None:
    assert head_version() == SCHEMA_VERSION


def test_migrate_creates_exactly_the_catalogue() -> None:
    uri = PG.scratch("catalogue")
    report = migrate(uri, timescale="off")
    assert (report.before, report.after, report.timescale) == (0, SCHEMA_VERSION, False)
    options = parse_uri(uri)
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: probe(options), poolclass=NullPool
    )
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"include_name": lambda name, kind, parents: name != "alembic_version"}
        )
        assert compare_metadata(context, metadata) == []
    engine.dispose()


def test_bars_and_trades_are_monthly_range_partitions_with_brin_indexes() -> None:
    uri = PG.connect()
    schema = parse_uri(uri).schema
    strategies = _sql(
        uri,
        "SELECT c.relname, p.partstrat FROM pg_partitioned_table p "
        "JOIN pg_class c ON c.oid = p.partrelid JOIN pg_namespace n "
        f"ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' ORDER BY 1",
    )
    assert strategies == [("bars", "r"), ("trades", "r")]
    indexes = _sql(
        uri,
        f"SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = "
        f"'{schema}' AND tablename IN ('bars', 'trades') ORDER BY 1",
    )
    defs = dict(indexes)
    assert "UNIQUE INDEX bars_key" in defs["bars_key"]
    assert "(symbol, timeframe, ts)" in defs["bars_key"]
    assert "USING brin (ts)" in defs["bars_ts_brin"]
    assert "(source, symbol, trade_id, ts)" in defs["trades_key"]
    assert "USING brin (ts)" in defs["trades_ts_brin"]


def test_migrating_twice_changes_nothing() -> None:
    uri = PG.connect()
    report = migrate(uri, timescale="off")
    assert (report.before, report.after, report.changed) == (SCHEMA_VERSION, SCHEMA_VERSION, False)


def test_an_unmigrated_schema_is_refused_with_the_command_to_run() -> None:
    uri = PG.scratch("empty")
    with pytest.raises(
        StoreVersionError,
        match=r"has no MarketLake tables yet: run `marketlake "
        r"migrate --store postgresql://.*` first",
    ):
        open_store(uri)
    assert current_version(uri) == 0


def test_a_newer_schema_is_refused_by_the_store_and_by_migrate() -> None:
    uri = PG.scratch("newer")
    migrate(uri, timescale="off")
    schema = parse_uri(uri).schema
    _sql(uri, f"UPDATE {schema}.alembic_version SET version_num = '0099'")
    with pytest.raises(
        StoreVersionError,
        match=rf"schema version 99, newer than this "
        rf"MarketLake's {SCHEMA_VERSION}: upgrade MarketLake",
    ):
        open_store(uri)
    with pytest.raises(StoreVersionError, match="newer than this MarketLake"):
        migrate(uri)


def test_a_foreign_alembic_revision_is_refused() -> None:
    uri = PG.scratch("foreign")
    migrate(uri, timescale="off")
    _sql(uri, f"UPDATE {parse_uri(uri).schema}.alembic_version SET version_num = 'ae1027a6acf'")
    with pytest.raises(StoreVersionError, match="not a MarketLake revision"):
        open_store(uri)


def test_timescale_on_without_the_extension_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError,
        match="has no timescaledb extension: install it, or set MARKETLAKE_TIMESCALE=auto",
    ):
        migrate(PG.scratch("ts_on"), timescale="on")


def test_auto_uses_partitions_when_timescale_is_missing() -> None:
    report = migrate(PG.scratch("auto"), timescale="auto")
    assert report.timescale is report.timescale_available is False


def test_cli_migrate_reports_versions_and_check_exits_1_until_migrated(
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri = PG.scratch("cli")
    assert cli(["--store", uri, "migrate", "--check", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["after"] == 0
    assert cli(["--store", uri, "migrate", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert (row["before"], row["after"], row["layout"]) == (0, SCHEMA_VERSION, "monthly partitions")
    assert cli(["--store", uri, "migrate", "--check"]) == 0
    capsys.readouterr()
    with open_store(uri) as store:
        assert store.schema_version() == SCHEMA_VERSION


def test_doctor_says_to_migrate_an_unmigrated_store(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--store", PG.scratch("doctor"), "doctor", "--json"]) == 1
    checks = {c["check"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert "run `marketlake migrate" in checks["store"]["detail"]


def test_migrate_on_the_embedded_store_reports_its_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli(["--store", "duckdb:///:memory:", "migrate", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert (row["after"], row["layout"]) == (SCHEMA_VERSION, "duckdb")


def test_concurrent_migrations_queue_on_a_lock() -> None:
    import concurrent.futures

    uri = PG.scratch("race")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        reports = list(pool.map(lambda _: migrate(uri, timescale="off"), range(3)))
    assert sorted(r.before for r in reports) == [0, SCHEMA_VERSION, SCHEMA_VERSION]
    assert {r.after for r in reports} == {SCHEMA_VERSION}


def test_with_timescale_the_tables_stay_unpartitioned_for_hypertables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Timescale branch of the migration, run for real with the extension's DDL recorded."""
    from marketlake.store import pgmigrate, pgschema
    from marketlake.store.pgschema import TimescaleOptions
    from tests.conftest import bars_for

    recorded: list[str] = []

    def record(options: TimescaleOptions) -> list[str]:
        recorded.extend(pgschema.hypertable_ddl("bars", "symbol, timeframe", options))
        return []

    monkeypatch.setattr(pgmigrate, "_timescale_available", lambda connection: True)
    monkeypatch.setattr(pgschema, "timescale_ddl", record)
    uri = PG.scratch("timescale")
    report = migrate(uri, timescale="on", timescale_options=TimescaleOptions(retention="1 year"))
    assert (report.timescale, report.after) == (True, SCHEMA_VERSION)
    assert recorded[0].startswith("SELECT create_hypertable('bars', 'ts'")
    assert recorded[-1] == (
        "SELECT add_retention_policy('bars', INTERVAL '1 year', if_not_exists => TRUE)"
    )
    schema = parse_uri(uri).schema
    assert _sql(
        uri,
        f"SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c ON "
        f"c.oid = p.partrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = '{schema}'",
    ) == [(0,)]
    with open_store(uri) as store:
        bars = bars_for("BTCUSDT", start="2024-03-04", end="2024-03-05")
        assert store.write_bars(bars).inserted == bars.num_rows
        assert store.write_bars(bars).duplicates == bars.num_rows
