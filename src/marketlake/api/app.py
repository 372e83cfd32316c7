"""``create_app(settings)``: the FastAPI application, built fresh on every call.

Mounted: the resource routers of :mod:`marketlake.api.routes` under
``/api/v1``; ``/metrics`` (Prometheus); ``/docs`` and ``/redoc`` with their
assets served from the installed ``fastapi-offline`` package (no CDN);
``/openapi.json``; and the web dashboard at ``/`` (:mod:`marketlake.web`).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool

from marketlake import __version__
from marketlake.api.auth import Authenticator
from marketlake.api.cache import BarCache
from marketlake.api.deps import ApiContext, strict_query
from marketlake.api.errors import Problem, install_error_handlers, log, problem_responses
from marketlake.api.fastpath import HotRoutes, hot_routes
from marketlake.api.jobs import JobRunner
from marketlake.api.limits import GuardMiddleware
from marketlake.api.observability import ApiMetrics, FindingsCollector, ObservabilityMiddleware
from marketlake.api.ratelimit import make_rate_limiter
from marketlake.api.routes import API_ROUTERS
from marketlake.api.sse import StreamSlots
from marketlake.config import Settings, load_settings
from marketlake.errors import MarketLakeError
from marketlake.store import Store
from marketlake.stream.bus import Bus
from marketlake.web import mount_dashboard

API_PREFIX = "/api/v1"
DESCRIPTION = """\
Market data from MarketLake: instruments, bars (JSON pages with a keyset cursor, or CSV,
Arrow IPC and Parquet streamed in batches), latest prices, ingest jobs, data-quality
reports, streaming analytics, alerts, live data and replays (server-sent events).

**Auth.** Send an API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`
(create one with `marketlake keys create NAME --scope read,write`), or a JWT when the
server trusts a JWKS URL. Reads are open unless the server requires keys; writes need
`write`, key management needs `admin`.

**Errors** are `application/problem+json` (RFC 9457) with `type`, `title`, `status`,
`detail` and, for bad input, the offending `param`.
"""
TAGS = [
    {"name": "bars", "description": "OHLCV bars: pages, bulk downloads, the newest bar"},
    {"name": "prices", "description": "Closes and the newest price"},
    {"name": "instruments", "description": "The instrument registry"},
    {"name": "jobs", "description": "Ingest jobs running in the background"},
    {"name": "quality", "description": "Data-quality reports"},
    {"name": "keys", "description": "API keys (admin)"},
    {"name": "metrics", "description": "Streaming analytics: the latest values per symbol"},
    {"name": "alerts", "description": "Alerts, their live stream (SSE) and the alert rules"},
    {"name": "live", "description": "Live trades and bars (SSE) and replays of stored bars"},
    {"name": "portfolio", "description": "Positions valued at the latest prices"},
    {"name": "health", "description": "Liveness and readiness"},
]
_DOCS_ASSETS = "/static/docs"
# GET routes answered by :class:`HotRoutes` when the request is well-formed (paths below /api/v1)
HOT_ROUTES = ("/bars/{symbol:path}", "/prices/{symbol:path}", "/prices/{symbol:path}/latest")
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "HTTPBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key or a JWT: `Authorization: Bearer <token>`",
    },
    "APIKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key",
    },
}


def create_app(
    settings: Settings | None = None,
    store: Store | None = None,
    bus: Bus | None = None,
    *,
    freeze_gc: bool = False,
    local_token: str | None = None,
) -> FastAPI:
    """A new MarketLake API app; ``store`` and ``bus`` default to opening ``settings.store``
    and ``settings.bus`` on first use (pass the bus of an in-process feed to share it).

    ``freeze_gc`` (for a server process, which runs one app): once started, move every
    object alive to the collector's permanent generation. Start-up leaves a few hundred
    thousand of them (FastAPI, pydantic, Arrow, DuckDB, pandas); each full collection
    walked them all, a ~100 ms stall of every request in flight, every few tens of
    thousands of requests.

    ``local_token``: the token ``marketlake serve`` writes to the discovery file beside an
    embedded store; requests bearing it from a loopback address get every scope.
    """
    settings = settings or Settings()
    metrics = ApiMetrics()
    ctx = ApiContext(
        settings=settings,
        metrics=metrics,
        auth=Authenticator(settings),
        cache=BarCache(
            settings.api_cache_max_rows,
            settings.api_cache_ttl_s,
            settings.api_cache_check_ms / 1000,
        ),
        jobs=JobRunner(settings, metrics),
        streams=StreamSlots(settings.api_sse_clients_per_client),
        _store=store,
        _bus=bus,
        local_token=local_token,
        limiter=(
            make_rate_limiter(
                settings.bus, settings.api_rate_limit_per_minute, settings.api_rate_limit_prefix
            )
            if settings.api_rate_limit_per_minute > 0
            else None
        ),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await _warm_up(ctx)
        if freeze_gc:
            gc.collect()
            gc.freeze()
        yield
        await ctx.jobs.shutdown()
        ctx.cache.close()
        if ctx.limiter is not None:
            await ctx.limiter.close()
        ctx.close_store()
        await ctx.close_bus()

    app = FastAPI(
        title="MarketLake API",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    for router in API_ROUTERS:
        app.include_router(router, prefix=API_PREFIX, dependencies=[Depends(strict_query)])
    _mount_site(app, ctx)
    install_error_handlers(app)
    app.add_middleware(
        HotRoutes, fastapi_app=app, routes=hot_routes(API_PREFIX, API_ROUTERS, HOT_ROUTES)
    )
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.api_max_body_bytes)
    if settings.api_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api_cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Next-Cursor", "X-Request-ID", "Retry-After"],
        )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, access_log=settings.api_access_log)
    metrics.registry.register(FindingsCollector(lambda: ctx.store.finding_counts()))
    app.openapi = lambda: _openapi(app, open_reads=not settings.api_require_key_for_reads)  # type: ignore[method-assign]
    return app


async def _warm_up(ctx: ApiContext) -> None:
    """Open the store and run one parameterised query before the first request.

    DuckDB's Python client imports pandas on its first query with parameters
    (seconds on a cold machine); paying that at start-up keeps the first request fast.
    A store that cannot be opened is reported by ``/ready``, not fatal here.
    """
    try:
        await run_in_threadpool(ctx.store.ping)
    except MarketLakeError as exc:
        log.warning("store_unavailable_at_start", error=exc.message)


def _mount_site(app: FastAPI, ctx: ApiContext) -> None:
    """Root routes outside /api/v1: home page, Prometheus metrics and offline docs."""
    assets = resources.files("fastapi_offline") / "static"
    app.mount(_DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    mount_dashboard(app)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body = await run_in_threadpool(generate_latest, ctx.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="MarketLake API",
            swagger_js_url=f"{_DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{_DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{_DOCS_ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title="MarketLake API",
            redoc_js_url=f"{_DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{_DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def _openapi(app: FastAPI, *, open_reads: bool) -> dict[str, Any]:
    """FastAPI's schema, with every error documented as a problem+json response.

    With open reads, GET routes (but key management) list anonymous access (``{}``)
    as an alternative to the key and bearer schemes.
    """
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    components = schema["components"].setdefault("schemas", {})
    _, defs = models_json_schema(
        [(Problem, "serialization")], ref_template="#/components/schemas/{model}"
    )
    components.update(defs.get("$defs", {}))
    common = problem_responses(401, 403, 429, 503)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = problem_responses(422)[422]
            if "requestBody" in operation:
                responses.setdefault("400", problem_responses(400)[400])
            if path.startswith(API_PREFIX) and not path.endswith(("/health", "/ready")):
                for status, entry in common.items():
                    responses.setdefault(str(status), entry)
                security: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]
                if (
                    open_reads
                    and operation is operations.get("get")
                    and ("keys" not in operation["tags"])
                ):
                    security = [{}, *security]  # anonymous reads are allowed
                operation["security"] = security
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    app.openapi_schema = schema
    return schema


def app_from_env() -> FastAPI:
    """The app with settings from the environment (uvicorn's factory for several workers)."""
    from marketlake.api.observability import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    return create_app(settings, freeze_gc=True)
