"""Dependencies of the routes, as ``Annotated`` aliases (``store: StoreDep`` …).

Everything a route needs hangs off one :class:`ApiContext` built by
``create_app``; nothing here is created at import time.

Access: ``ReadAccess``, ``WriteAccess`` and ``AdminAccess`` authenticate the
caller (API key or JWT), check the scope and count the request against the
caller's rate limit. Reads are open unless ``MARKETLAKE_API_REQUIRE_KEY_FOR_READS``
is set; a credential sent to an open route is still checked (a revoked key is
rejected everywhere).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from starlette.concurrency import run_in_threadpool

from marketlake.api.auth import LOCAL, Authenticator, Principal
from marketlake.api.cache import BarCache
from marketlake.api.jobs import JobRunner
from marketlake.api.observability import ApiMetrics
from marketlake.api.ratelimit import RequestLimiter
from marketlake.api.sse import StreamSlot, StreamSlots
from marketlake.config import Settings
from marketlake.errors import AuthError, InputError
from marketlake.schema import normalize_symbol
from marketlake.store import Store, open_store
from marketlake.stream.bus import Bus, open_bus

SYMBOL_PATTERN = r"^[A-Za-z0-9^._=\-/]{1,32}$"
TIMEFRAME_PATTERN = r"^([1-9][0-9]{0,3}[mhd]|1w|1mo)$"
_SYMBOL = re.compile(r"^[A-Z0-9^._=\-]{1,32}$")


@dataclass
class ApiContext:
    """The settings, store and services of one app instance."""

    settings: Settings
    metrics: ApiMetrics
    auth: Authenticator
    cache: BarCache
    jobs: JobRunner
    limiter: RequestLimiter | None = None
    streams: StreamSlots = field(default_factory=lambda: StreamSlots(20))
    _store: Store | None = field(default=None, repr=False)
    owns_store: bool = False
    _bus: Bus | None = field(default=None, repr=False)
    owns_bus: bool = False
    local_token: str | None = field(default=None, repr=False)

    @property
    def store(self) -> Store:
        """The store; opened on first use when the app was not given one."""
        if self._store is None:
            self._store = open_store(self.settings.store)
            self.owns_store = True
        return self._store

    def close_store(self) -> None:
        if self._store is not None and self.owns_store:
            self._store.close()
            self._store = None

    @property
    def bus(self) -> Bus:
        """The event bus (live SSE streams, feed states); opened on first use."""
        if self._bus is None:
            self._bus = open_bus(self.settings, "api")
            self.owns_bus = True
        return self._bus

    @property
    def open_bus(self) -> Bus | None:
        """The bus if one is open (passed in, or opened by a request); None otherwise."""
        return self._bus

    async def close_bus(self) -> None:
        if self._bus is not None and self.owns_bus:
            await self._bus.close()
            self._bus = None


# Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in the thread
# pool, two thread hops per request for what is an attribute lookup.


def context_of(request: Request) -> ApiContext:
    """The :class:`ApiContext` of the app serving ``request``."""
    ctx = request.app.state.ctx
    assert isinstance(ctx, ApiContext)
    return ctx


async def get_context(request: Request) -> ApiContext:
    return context_of(request)


async def get_store(request: Request) -> Store:
    ctx = context_of(request)
    if ctx._store is None:  # opening the store blocks: do it off the event loop
        await run_in_threadpool(lambda: ctx.store)
    return ctx.store


async def get_settings(request: Request) -> Settings:
    return context_of(request).settings


async def get_bus(request: Request) -> Bus:
    return context_of(request).bus


ContextDep = Annotated[ApiContext, Depends(get_context)]
StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
BusDep = Annotated[Bus, Depends(get_bus)]


def credential(request: Request) -> str | None:
    """The token of ``X-API-Key`` or ``Authorization: Bearer``, if any.

    Read straight from the headers (not through FastAPI's security classes, which cost
    two dependency resolutions per request); ``create_app`` documents both schemes.
    """
    headers = request.headers
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def access(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits callers holding ``scope`` and counts their request."""

    async def check(request: Request) -> Principal:
        ctx = context_of(request)
        token = credential(request)
        principal: Principal | None
        if token and ctx.local_token and secrets.compare_digest(token, ctx.local_token):
            principal = _local(request)
        elif token:
            principal = ctx.auth.authenticate_cached(token)
            if principal is None:
                principal = await run_in_threadpool(ctx.auth.authenticate, ctx.store, token)
        else:
            principal = ctx.auth.anonymous()
        caller = (
            f"{principal.kind}:{principal.id}"
            if principal.kind != "anonymous"
            else f"ip:{request.client.host if request.client else 'unknown'}"
        )
        request.state.caller = caller
        if ctx.limiter is not None:
            await ctx.limiter.hit(caller)
        principal.require(scope)
        request.state.principal = principal
        return principal

    check.__name__ = f"require_{scope}"
    return check


def _local(request: Request) -> Principal:
    """The holder of the discovery file's token, which only counts from this machine."""
    host = request.client.host if request.client else ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise AuthError("the local server token is accepted from this machine only")
    return LOCAL


ReadAccess = Annotated[Principal, Depends(access("read"))]


async def stream_slot(request: Request, _: ReadAccess) -> AsyncIterator[StreamSlot]:
    """One of the caller's SSE streams (429 past ``MARKETLAKE_API_SSE_CLIENTS_PER_CLIENT``);
    given back when the route fails, else when its stream ends."""
    slot = context_of(request).streams.take(request.state.caller)
    try:
        yield slot
    finally:
        if not slot.handed:
            slot.release()


StreamSlotDep = Annotated[StreamSlot, Depends(stream_slot)]
WriteAccess = Annotated[Principal, Depends(access("write"))]
AdminAccess = Annotated[Principal, Depends(access("admin"))]


async def symbol_param(
    symbol: Annotated[
        str,
        Path(
            description="Instrument symbol (case-insensitive)",
            examples=["AAPL"],
            pattern=SYMBOL_PATTERN,
        ),
    ],
) -> str:
    """The path's symbol, upper-cased and checked."""
    upper = symbol.strip().upper()
    if _SYMBOL.match(upper) and not upper.startswith(".") and ".." not in upper:
        return upper  # the common case, without building a model
    return normalize_symbol(symbol)


SymbolDep = Annotated[str, Depends(symbol_param)]


async def in_thread(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run blocking store work off the event loop."""
    return await run_in_threadpool(func, *args, **kwargs)


_QUERY_SHAPES: dict[int, tuple[frozenset[str], frozenset[str]]] = {}


def _query_shape(route: Any) -> tuple[frozenset[str], frozenset[str]]:
    """The query parameters ``route`` takes, and those of them that may repeat."""
    shape = _QUERY_SHAPES.get(id(route))
    if shape is None:
        from fastapi._compat import field_annotation_is_sequence

        fields: list[Any] = []
        pending = [route.dependant]
        while pending:
            dependant = pending.pop()
            fields.extend(dependant.query_params)
            pending.extend(dependant.dependencies)
        shape = (
            frozenset(f.alias for f in fields),
            frozenset(
                f.alias for f in fields if field_annotation_is_sequence(f.field_info.annotation)
            ),
        )
        _QUERY_SHAPES[id(route)] = shape
    return shape


async def strict_query(request: Request) -> None:
    """An unknown query parameter (``timefrme=``) or a repeated one (``limit=1&limit=2``)
    is a 422 naming it, not silently ignored."""
    if not request.url.query:
        return
    route = request.scope.get("route")
    if route is None:
        return
    known, repeatable = _query_shape(route)
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name not in known:
            takes = ", ".join(sorted(known)) or "none"
            raise InputError(
                f"unknown query parameter {name!r}; this route takes: {takes}", param=name
            )
        if name in seen and name not in repeatable:
            raise InputError(f"query parameter {name!r} is given more than once", param=name)
        seen.add(name)
