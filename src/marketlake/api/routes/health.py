"""``GET /health`` (liveness) and ``GET /ready`` (the store and bus answer; live feeds' state)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from marketlake import __version__
from marketlake.api.deps import ContextDep, in_thread
from marketlake.api.errors import problem_response, problem_responses
from marketlake.api.models import Health, Readiness
from marketlake.errors import MarketLakeError

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Liveness")
async def health() -> Health:
    """The process is up. Needs no key and is not rate limited."""
    return Health(status="ok", version=__version__)


@router.get(
    "/ready", response_model=Readiness, summary="Readiness", responses=problem_responses(503)
)
async def ready(request: Request, ctx: ContextDep) -> Readiness | Response:
    """The store answers (and the Redis bus, when configured): 200, else 503 naming the failure."""
    checks: dict[str, str] = {}
    try:
        with ctx.metrics.store_call("ready"):
            await in_thread(ctx.store.ping)
            version = await in_thread(ctx.store.schema_version)
        checks["store"] = f"ok (schema {version})"
    except MarketLakeError as exc:
        return problem_response(request, 503, "Not ready", f"store: {exc.message}")
    bus = ctx.settings.bus
    if bus.startswith(("redis://", "rediss://")):
        failure = await _ping_redis(bus)
        if failure:
            return problem_response(request, 503, "Not ready", f"bus {bus}: {failure}")
        checks["bus"] = "ok"
    else:
        checks["bus"] = f"{bus} (in-process)"
    for name, state in (await ctx.bus.statuses()).items():
        if name.startswith("feed:"):
            checks[name] = feed_check(state)
    return Readiness(status="ready", checks=checks)


def feed_check(state: dict[str, Any]) -> str:
    """A live feed's connection state in words (it does not make the API unready)."""
    text = str(state.get("state", "unknown"))
    age = state.get("last_message_age_s")
    if text == "connected" and age is not None:
        text += f", last message {age:.1f} s ago"
    elif state.get("last_error") and text != "outside-window":
        text += f": {state['last_error']}"
    return text


async def _ping_redis(url: str) -> str | None:
    import redis
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        return str(exc)
    finally:
        await client.aclose()
    return None
