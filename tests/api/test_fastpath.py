"""The hot-route fast path answers exactly as FastAPI would, and steps aside when unsure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import fastapi.routing
import httpx
import orjson
import pytest
from fastapi import APIRouter, FastAPI

from marketlake.api import create_app
from marketlake.api.fastpath import HotRoutes, Unsupported, hot_routes
from marketlake.schema import parse_time
from marketlake.store import Store
from marketlake.store.base import encode_cursor
from tests.api.conftest import BASE, bearer, settings

URLS = [
    "/api/v1/bars/BTCUSDT?limit=100",
    "/api/v1/bars/btcusdt?limit=3&timeframe=1m&start=2024-03-04T12:00:00Z&end=2024-03-05",
    "/api/v1/bars/AAPL?limit=2&format=csv",
    "/api/v1/bars/AAPL?format=arrow&limit=5",
    "/api/v1/bars/AAPL?limit=5&cursor=" + encode_cursor("AAPL", parse_time("2024-03-04T01:00Z")),
    "/api/v1/bars/AAPL?limit=5&cursor=not-a-cursor",
    "/api/v1/bars/AAPL?timeframe=7x",
    "/api/v1/bars/AAPL?start=2024-03-05&end=2024-03-04",
    "/api/v1/bars/AAPL?start=yesterday",
    "/api/v1/bars/NOPE?limit=1",
    "/api/v1/bars/AAPL?limit=0",
    "/api/v1/bars/AAPL?limit=abc",
    "/api/v1/bars/AAPL?limit=",
    "/api/v1/bars/AAPL?format=xml",
    "/api/v1/bars/AAPL?limit=1&limit=2",
    "/api/v1/bars/AAPL?limit=2&unknown=1",
    "/api/v1/bars/AAPL?cursor=" + "x" * 201,
    "/api/v1/bars/A%20B?limit=1",
    "/api/v1/bars/" + "A" * 33,
    "/api/v1/bars/BTCUSDT/latest",
    "/api/v1/prices/BTCUSDT?limit=3",
    "/api/v1/prices/BTCUSDT?limit=99999",
    "/api/v1/prices/aapl/latest",
    "/api/v1/prices/NOPE/latest",
    "/api/v1/prices/AAPL/latest?timeframe=1m",
]


async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client,
    ):
        yield client


def _without_fast_path(app: FastAPI) -> FastAPI:
    app.user_middleware = [m for m in app.user_middleware if m.cls is not HotRoutes]
    return app


def _comparable(response: httpx.Response) -> tuple[Any, ...]:
    body: Any = response.content
    if response.headers["content-type"].startswith(
        ("application/json", "application/problem+json")
    ):
        body = orjson.loads(body)
        if isinstance(body, dict):
            body.pop("request_id", None)
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id",)}
    return response.status_code, headers, body


@pytest.mark.parametrize("auth", [{}, "read", "revoked"])
async def test_fast_path_answers_like_fastapi(
    seeded: Store, keys: dict[str, str], auth: Any
) -> None:
    """Every URL, good or bad, gets the same status, headers and body either way."""
    headers = bearer(keys[auth]) if isinstance(auth, str) else {}
    answers: dict[str, list[tuple[Any, ...]]] = {"fast": [], "plain": []}
    apps = {
        "fast": create_app(settings(), seeded),
        "plain": _without_fast_path(create_app(settings(), seeded)),
    }
    for name, app in apps.items():
        async for client in _client(app):
            for url in URLS:
                answers[name].append(_comparable(await client.get(url, headers=headers)))
    fast, plain = answers["fast"], answers["plain"]
    for url, one, other in zip(URLS, fast, plain, strict=True):
        assert one == other, url


async def test_well_formed_requests_skip_fastapi_and_others_reach_it(
    seeded: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI's dependency solver runs only for what the fast path left to it."""
    calls: list[str] = []
    solve = fastapi.routing.solve_dependencies

    async def counted(**kwargs: Any) -> Any:
        calls.append(kwargs["request"].url.path)
        return await solve(**kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    async for client in _client(create_app(settings(), seeded)):
        assert (await client.get("/api/v1/bars/AAPL?limit=2")).status_code == 200
        assert (await client.get("/api/v1/prices/AAPL/latest")).status_code == 200
        assert (await client.get("/api/v1/bars/NOPE?limit=2")).status_code == 404
        assert calls == []
        assert (await client.get("/api/v1/bars/AAPL?limit=0")).status_code == 422
        assert (
            await client.get("/api/v1/bars/AAPL?limit=2&x=1")
        ).status_code == 422  # unknown: named
        assert (await client.get("/api/v1/bars/AAPL/latest")).status_code == 200
        assert calls == ["/api/v1/bars/AAPL"] * 2 + ["/api/v1/bars/AAPL/latest"]


async def test_every_request_counts_once_against_the_rate_limit_whichever_path_answers(
    make_client: Any,
) -> None:
    async with make_client(api_rate_limit_per_minute=3) as client:
        codes = [
            (await client.get(url)).status_code
            for url in (
                "/api/v1/bars/AAPL?limit=2",
                "/api/v1/bars/AAPL?limit=0",
                "/api/v1/prices/AAPL/latest",
                "/api/v1/bars/AAPL?limit=2",
            )
        ]
        limited = await client.get("/api/v1/prices/AAPL/latest")
    assert codes == [200, 422, 200, 429]
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "20"
    assert limited.headers["content-type"] == "application/problem+json"


async def test_fast_path_counts_requests_in_the_route_metrics(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await client.get("/api/v1/bars/AAPL?limit=2")).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert (
        'marketlake_http_requests_total{method="GET",route="/api/v1/bars/{symbol}",'
        'status="200"} 3.0'
    ) in metrics


def test_a_route_the_fast_path_cannot_resolve_is_refused_at_start() -> None:
    router = APIRouter()

    @router.get("/sync")
    def sync_endpoint() -> dict[str, str]:
        return {}

    with pytest.raises(Unsupported, match="/sync"):
        hot_routes("", [router], ["/sync"])
