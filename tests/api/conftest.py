"""API fixtures: an app on an in-memory store, an async client, keys of every scope."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from marketlake.api import create_app
from marketlake.api.keys import create_key
from marketlake.config import Settings
from marketlake.schema import Instrument
from marketlake.store import Store
from tests.conftest import bars_for

BASE = "http://test"


def settings(**overrides: Any) -> Settings:
    """Settings that ignore the environment and .env files, with test-friendly defaults."""
    values: dict[str, Any] = {
        "store": "duckdb:///:memory:",
        "api_key_cache_s": 0.0,
        "api_access_log": False,
    }
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]


async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client,
    ):
        yield client


@pytest.fixture
def seeded(duck: Store) -> Store:
    """An embedded store with AAPL and BTCUSDT 1m bars for 2024-03-04 and 05."""
    duck.add_instrument(Instrument(symbol="AAPL", name="Apple", exchange="XNAS"))
    duck.add_instrument(Instrument(symbol="BTCUSDT", asset_class="crypto", timezone="UTC"))
    duck.write_bars(bars_for(["AAPL", "BTCUSDT"]))
    return duck


@pytest.fixture
def make_client(seeded: Store) -> Callable[..., Any]:
    """``async with make_client(**settings) as client`` on the seeded store."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(settings(**overrides), seeded)
        async for client in client_for(app):
            yield client

    return make


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c


@pytest.fixture
def keys(seeded: Store) -> dict[str, str]:
    """Plaintext keys with scopes read, write and admin, and a revoked one."""
    from marketlake.api.keys import revoke_key

    made = {
        scope: create_key(seeded, f"{scope}-key", scope)[1] for scope in ("read", "write", "admin")
    }
    made["revoked"] = create_key(seeded, "old", "write,admin")[1]
    revoke_key(seeded, "old")
    return made


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
