"""Shared fixtures: stores on every backend, synthetic bars, service checks.

Tests that need PostgreSQL or Redis skip with a reason when the server is not
reachable, except under ``MARKETLAKE_REQUIRE_SERVICES=1`` (set by ``.ci/run``),
where they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
import redis

from marketlake.providers.synthetic import generate_bars
from marketlake.store import Store, open_store

REQUIRE_SERVICES = os.environ.get("MARKETLAKE_REQUIRE_SERVICES") == "1"
REDIS_URL = "redis://127.0.0.1:6379/0"


def service_unavailable(name: str, reason: str) -> None:
    """Skip (or fail under MARKETLAKE_REQUIRE_SERVICES=1) because a service is missing."""
    message = f"{name} not reachable: {reason}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (MARKETLAKE_REQUIRE_SERVICES=1 requires it)")
    pytest.skip(message)


STORE_BACKENDS = ["duckdb", "postgres"]
PG_SERVER = os.environ.get("MARKETLAKE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


class PostgresSchema:
    """One schema per test run in the test database, migrated once, dropped at the end."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.name = f"ml_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.uri: str | None = None
        self.error: str | None = None

    def connect(self) -> str:
        """The migrated store URI; skips (or fails) the test when the server is down."""
        if self.uri is None and self.error is None:
            import psycopg

            try:
                with psycopg.connect(self.server, connect_timeout=3, autocommit=True) as conn:
                    _drop_orphans(conn)
            except psycopg.OperationalError as exc:
                self.error = " ".join(str(exc).split())
            else:
                from marketlake.store.pgmigrate import migrate

                self.uri = f"{self.server}?schema={self.name}"
                migrate(self.uri, timescale="off")
        if self.uri is None:
            service_unavailable("PostgreSQL", f"{self.server}: {self.error}")
        assert self.uri is not None
        return self.uri

    def scratch(self, suffix: str) -> str:
        """The URI of another (unmigrated) schema of this run, dropped at the end."""
        self.connect()
        return f"{self.server}?schema={self.name}_{suffix}"

    def drop(self) -> None:
        if self.uri is None:
            return
        import psycopg

        with psycopg.connect(self.server, autocommit=True) as conn:
            schemas = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", [f"{self.name}%"]
            ).fetchall()
            for (name,) in schemas:
                conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def _drop_orphans(conn: Any) -> None:
    """Drop the schemas of earlier runs on this machine whose process is gone (killed runs)."""
    rows = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname ~ '^ml_test_[0-9]+_[0-9a-f]{8}(_[a-z_]+)?$'"
    ).fetchall()
    for (name,) in rows:
        pid = int(name.split("_")[2])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        except PermissionError:  # alive, someone else's
            continue


PG = PostgresSchema(PG_SERVER)


@pytest.fixture(autouse=True)
def _private_default_store(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test touches ./data: a CLI call or app without --store gets a store of its own."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("MARKETLAKE_STORE", f"duckdb:///{home}/marketlake.duckdb")
    monkeypatch.setenv("MARKETLAKE_DATA_DIR", str(home))


@pytest.fixture(scope="session", autouse=True)
def _drop_postgres_schemas() -> Iterator[None]:
    yield
    PG.drop()


def empty_postgres_store() -> Store:
    """The run's PostgreSQL store with every table emptied."""
    from marketlake.store.tables import TABLES

    store = open_store(PG.connect())
    with store.transaction():  # DELETE is much cheaper than TRUNCATE on small tables
        for name in TABLES:
            store.execute(f"DELETE FROM {name}")
    return store


def make_store(backend: str) -> Iterator[Store]:
    if backend == "duckdb":
        store = open_store("duckdb:///:memory:")
    elif backend == "postgres":
        store = empty_postgres_store()
    else:
        raise ValueError(backend)
    yield store
    store.close()


@pytest.fixture(
    params=[
        pytest.param(b, marks=pytest.mark.postgres) if b == "postgres" else b
        for b in STORE_BACKENDS
    ]
)
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """An empty store on every backend; the contract suite runs on each."""
    yield from make_store(request.param)


@pytest.fixture
def pg() -> Iterator[Store]:
    """An empty PostgreSQL store (skipped when the server is unreachable)."""
    yield from make_store("postgres")


@pytest.fixture
def duck() -> Iterator[Store]:
    """An empty embedded store."""
    yield from make_store("duckdb")


def bars_for(
    symbols: str | list[str],
    timeframe: str = "1m",
    start: str = "2024-03-04",
    end: str = "2024-03-06",
) -> pa.Table:
    """Synthetic bars for tests; deterministic."""
    return generate_bars(
        symbols,
        timeframe,
        datetime.fromisoformat(start).replace(tzinfo=UTC),
        datetime.fromisoformat(end).replace(tzinfo=UTC),
    )


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A unique key prefix on the real Redis server, deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_unavailable("Redis", str(exc))
    prefix = f"mltest-{uuid.uuid4().hex[:10]}:"
    yield prefix
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()
