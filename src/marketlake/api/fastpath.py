"""A fast path for the hottest read routes: FastAPI's own endpoints, minus its per-request work.

FastAPI spends most of a small request resolving dependencies: for every query
parameter it re-inspects the annotation, looks up aliases and copies defaults,
then walks the middleware stack and every router to find the route. For a few
hot GET routes (bars, latest price) :class:`HotRoutes` matches the path itself
and resolves the route's dependant from a plan made once: each parameter is
validated by the same pydantic field FastAPI would use, each dependency is the
same function, and the endpoint is the same function.

It is only an accelerator. A request it is not sure about (an invalid or
unknown or repeated query parameter, a dependency override, a method other than
GET) goes on to FastAPI unchanged, so FastAPI keeps the last word on every
validation error. Errors the endpoint raises are answered by the app's own
exception handlers.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, get_type_hints
from urllib.parse import parse_qsl

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

_MISSING = object()
_SCALARS = (type(None), str, int, float, bool)


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    alias: str
    field: Any  # fastapi's ModelField: .validate(value, values, loc=...)
    default: Any


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to call one dependant: its parameters, sub-dependencies and request argument."""

    call: Callable[..., Awaitable[Any]]
    path: tuple[_Param, ...]
    query: tuple[_Param, ...]
    dependencies: tuple[tuple[str, _Plan], ...]
    request_name: str | None


class Unsupported(TypeError):
    """A hot route uses something the fast path does not resolve (a programming error,
    raised by ``create_app``)."""


def _params(fields: Iterable[Any]) -> tuple[_Param, ...]:
    out = []
    for field in fields:
        info = field.field_info
        if info.validation_alias is not None:
            raise Unsupported(f"{field.name}: a validation alias")
        if info.is_required():
            default = _MISSING
        elif info.validate_default or not isinstance(info.default, _SCALARS):
            raise Unsupported(f"{field.name}: a default FastAPI would copy or validate")
        else:
            default = info.default
        out.append(_Param(field.name, field.alias, field, default))
    return tuple(out)


def plan(dependant: Dependant) -> _Plan:
    """The plan of ``dependant``; raises :class:`Unsupported` for anything beyond plain
    path/query scalars, ``Request`` and async (non-generator) dependencies."""
    call = dependant.call
    if not inspect.iscoroutinefunction(call):  # also rules out generators (yield)
        raise Unsupported(f"{call}: not a plain async function")
    if (
        dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
        or dependant.websocket_param_name
        or dependant.http_connection_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
        or dependant.own_oauth_scopes
        or not dependant.use_cache
    ):
        raise Unsupported(f"{call}: needs more than the request and its path and query")
    for field in dependant.query_params:
        if _is_sequence(field.field_info.annotation):
            raise Unsupported(f"{field.name}: a list parameter")
    subs = []
    for sub in dependant.dependencies:
        if sub.name is None:
            raise Unsupported(f"{call}: a dependency without a parameter")
        subs.append((sub.name, plan(sub)))
    return _Plan(
        call,
        _params(dependant.path_params),
        _params(dependant.query_params),
        tuple(subs),
        dependant.request_param_name,
    )


def _is_sequence(annotation: Any) -> bool:
    from fastapi._compat import field_annotation_is_sequence

    return bool(field_annotation_is_sequence(annotation))


def _query_names(p: _Plan) -> set[str]:
    return {q.alias for q in p.query} | {n for _, s in p.dependencies for n in _query_names(s)}


def _validate(
    p: _Plan, path: dict[str, str], query: dict[str, str], out: dict[int, dict[str, Any]]
) -> bool:
    """Validate every parameter of ``p`` and its dependencies into ``out`` (by plan id);
    False on the first invalid one (FastAPI then answers the request)."""
    values: dict[str, Any] = {}
    for params, source, where in ((p.path, path, "path"), (p.query, query, "query")):
        for param in params:
            raw = source.get(param.alias, _MISSING)
            if raw is _MISSING:
                if param.default is _MISSING:
                    return False
                values[param.name] = param.default
                continue
            value, errors = param.field.validate(raw, values, loc=(where, param.alias))
            if errors:
                return False
            values[param.name] = value
    out[id(p)] = values
    return all(_validate(sub, path, query, out) for _, sub in p.dependencies)


async def _solve(
    p: _Plan, request: Request, values: dict[int, dict[str, Any]], cache: dict[Any, Any]
) -> Any:
    kwargs = dict(values[id(p)])
    for name, sub in p.dependencies:
        if sub.call not in cache:  # FastAPI's use_cache: one call per request
            cache[sub.call] = await _solve(sub, request, values, cache)
        kwargs[name] = cache[sub.call]
    if p.request_name is not None:
        kwargs[p.request_name] = request
    return await p.call(**kwargs)


@dataclass(frozen=True, slots=True)
class HotRoute:
    route: APIRoute
    regex: Any
    plan: _Plan
    query_names: frozenset[str]


def hot_routes(prefix: str, routers: Iterable[APIRouter], paths: Iterable[str]) -> list[HotRoute]:
    """The GET routes of ``routers`` (included under ``prefix``) whose path is in ``paths``,
    planned; raises :class:`Unsupported` when one cannot take the fast path."""
    wanted = set(paths)
    found = [
        _hot(prefix + route.path, route)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and route.path in wanted and "GET" in (route.methods or ())
    ]
    if len(found) != len(wanted):
        raise Unsupported(f"not one GET route each for {sorted(wanted)}")
    return found


def _hot(path: str, route: APIRoute) -> HotRoute:
    if "GET" not in (route.methods or ()):
        raise Unsupported(f"{path}: not a GET route")
    if get_type_hints(route.endpoint).get("return") is not Response:
        raise Unsupported(f"{path}: the endpoint must return a Response")
    regex, _, _ = compile_path(path)
    p = plan(route.dependant)
    return HotRoute(route, regex, p, frozenset(_query_names(p)))


class HotRoutes:
    """Pure ASGI middleware answering well-formed GETs of ``routes`` through their
    :func:`plan`; ``fastapi_app`` provides the exception handlers."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, routes: list[HotRoute]) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or (self.fastapi_app.dependency_overrides)
        ):
            await self.app(scope, receive, send)
            return
        path = get_route_path(scope)
        for hot in self._routes:
            match = hot.regex.match(path)
            if match is not None:
                break
        else:
            await self.app(scope, receive, send)
            return
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        values: dict[int, dict[str, Any]] = {}
        path_params = match.groupdict()
        if (
            # a `{symbol:path}` value with a slash (BTC/USD, or AAPL/latest of a longer
            # route) goes through the router, which tries the more specific routes first
            any("/" in value for value in path_params.values())
            or len(query) != len(pairs)
            or not hot.query_names.issuperset(query)
            or not _validate(hot.plan, path_params, query, values)
        ):
            await self.app(scope, receive, send)
            return
        scope["route"] = hot.route
        scope["endpoint"] = hot.route.endpoint
        scope["path_params"] = path_params
        request = Request(scope, receive, send)
        try:
            response = await _solve(hot.plan, request, values, {})
        except Exception as exc:
            handler = _handler(self.fastapi_app, exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)


def _handler(app: FastAPI, exc: Exception) -> Callable[..., Any] | None:
    """The app's handler for ``exc`` as Starlette's ExceptionMiddleware would pick it
    (None for the catch-all ``Exception`` handler, which the server error middleware runs)."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return handler
    return None
