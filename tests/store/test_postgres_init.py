"""deploy/postgres/initdb/10-grafana-reader.sh, run for real: Grafana's login reads, never writes.

The script runs with ``psql`` against a throw-away database and a role name of
its own on the test server, as the PostgreSQL image runs it on first start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import service_unavailable
from tests.deploy.files import DEPLOY

pytestmark = pytest.mark.postgres

SCRIPT = DEPLOY / "postgres" / "initdb" / "10-grafana-reader.sh"
HOST, PORT, ADMIN = "127.0.0.1", "5432", "postgres"


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    """(database, reader role) names, created fresh and dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    if shutil.which("psql") is None:
        pytest.skip("the psql client is not installed")
    try:
        admin = psycopg.connect(
            f"postgresql://{ADMIN}@{HOST}:{PORT}/test", autocommit=True, connect_timeout=3
        )
    except psycopg.OperationalError as exc:
        service_unavailable("PostgreSQL", str(exc).strip())
    suffix = uuid.uuid4().hex[:10]
    name, role = f"ml_initdb_{suffix}", f"ml_reader_{suffix}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name, role
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()


def _connect(database: str, user: str) -> Any:
    import psycopg

    return psycopg.connect(f"postgresql://{user}@{HOST}:{PORT}/{database}", autocommit=True)


def test_reader_can_read_existing_and_future_tables_but_not_write(
    database: tuple[str, str],
) -> None:
    import psycopg

    name, role = database
    with _connect(name, ADMIN) as owner:
        owner.execute("CREATE TABLE before_init (x int)")
    env = {
        **os.environ,
        "PGHOST": HOST,
        "PGPORT": PORT,
        "POSTGRES_USER": ADMIN,
        "POSTGRES_DB": name,
        "GRAFANA_DB_USER": role,
        "GRAFANA_DB_PASSWORD": "s3cret",
    }
    result = subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    with _connect(name, ADMIN) as owner:
        owner.execute("CREATE TABLE bars_later (x int)")  # as `marketlake migrate` would
        owner.execute("INSERT INTO bars_later VALUES (42)")
    with _connect(name, role) as reader:
        assert reader.execute("SELECT x FROM bars_later").fetchall() == [(42,)]
        assert reader.execute("SELECT count(*) FROM before_init").fetchone() == (0,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader.execute("INSERT INTO bars_later VALUES (1)")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader.execute("CREATE TABLE sneaky (x int)")


def test_script_stops_on_the_first_error(database: tuple[str, str]) -> None:
    """Run twice, the second run fails (the role exists) instead of half-applying."""
    name, role = database
    env = {
        **os.environ,
        "PGHOST": HOST,
        "PGPORT": PORT,
        "POSTGRES_USER": ADMIN,
        "POSTGRES_DB": name,
        "GRAFANA_DB_USER": role,
        "GRAFANA_DB_PASSWORD": "x",
    }
    first = subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    second = subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert first.returncode == 0, first.stderr
    assert second.returncode != 0
    assert "already exists" in second.stderr
