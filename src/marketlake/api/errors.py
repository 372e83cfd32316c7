"""HTTP problems (RFC 9457): the one place that maps errors to responses.

Every error leaves the API as ``application/problem+json`` with ``type``,
``title``, ``status`` and ``detail``; input errors also name the offending
parameter in ``param`` (and list all of them in ``errors``), and every
problem carries the ``request_id`` that its log lines carry too.

    MarketLakeError subclasses   their ``http_status`` (422, 404, 409, 401, 403, 429, 503 …)
    RequestValidationError       422, naming the parameter FastAPI rejected
    pydantic ValidationError     422 (a model built from request data)
    HTTPException                its status (unknown route 404, wrong method 405 …)
    anything else                500, logged with its traceback
"""

from __future__ import annotations

import math
import re
from http import HTTPStatus
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from marketlake.config import redact
from marketlake.errors import AuthError, MarketLakeError, RateLimitError

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "urn:marketlake:problem:"

log = structlog.get_logger("marketlake.api")


class InvalidParam(BaseModel):
    """One rejected parameter of a request."""

    param: str = Field(examples=["limit"])
    location: str = Field(examples=["query"], description="query, path, header or body")
    message: str = Field(examples=["Input should be less than or equal to 1000000"])


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(examples=[f"{TYPE_BASE}not-found"], description="Problem type URI")
    title: str = Field(examples=["Not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["unknown symbol ZZZZ; list known ones with GET /instruments"])
    instance: str | None = Field(None, examples=["/api/v1/bars/ZZZZ"])
    param: str | None = Field(None, description="The offending parameter, for input errors")
    errors: list[InvalidParam] | None = Field(None, description="Every rejected parameter")
    request_id: str | None = Field(None, examples=["4f1c2b9e0d8a4a1e"])


_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "too-large",
    415: "unsupported-media-type",
    422: "invalid-input",
    429: "rate-limited",
    500: "internal",
    502: "provider-error",
    503: "unavailable",
}

EXAMPLES: dict[int, tuple[str, str]] = {
    400: ("Bad Request", "There was an error parsing the body"),
    401: (
        "Unauthorized",
        "this route needs an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
    ),
    403: ("Forbidden", "API key 'ci' has scopes read; this route needs write"),
    404: ("Not found", "unknown symbol ZZZZ; list known ones with GET /api/v1/instruments"),
    409: ("Conflict", "instrument AAPL exists already; use PUT /api/v1/instruments/AAPL"),
    422: (
        "Invalid input",
        "query parameter 'limit': Input should be less than or equal to 1000000",
    ),
    429: ("Too many requests", "rate limit of 6000 requests per minute reached; retry in 3 s"),
    503: ("Store unavailable", "DuckDB: IO Error: could not read the database file"),
}


def problem_type(status: int) -> str:
    return TYPE_BASE + _SLUGS.get(status, str(status))


def problem_response(
    request: Request,
    status: int,
    title: str,
    detail: str,
    *,
    param: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A ``application/problem+json`` response for ``request``."""
    body: dict[str, Any] = {
        "type": problem_type(status),
        "title": title,
        "status": status,
        "detail": redact(detail),
        "instance": request.url.path,
    }
    if param is not None:
        body["param"] = param
    if errors:
        body["errors"] = errors
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


async def _marketlake_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MarketLakeError)
    status = exc.http_status
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimitError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    elif isinstance(exc, AuthError) and status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="marketlake"'
    if status >= 500:
        log.warning("request_failed", status=status, error=exc.message)
    param = getattr(exc, "param", None)
    message = api_words(exc.message)
    errors = None
    if param is not None:
        errors = [{"param": param, "location": _location(request, param), "message": message}]
    return problem_response(
        request, status, exc.title, message, param=param, errors=errors, headers=headers
    )


_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")


def api_words(message: str) -> str:
    """A message of the shared layers in the API's words: their command-line options
    (``--start``, ``--replace-sources``) become the parameters of the request (``start``,
    ``replace_sources``); the API never tells a client to pass a flag."""
    return _FLAG.sub(lambda m: m.group(1).replace("-", "_"), message)


def _location(request: Request, param: str) -> str:
    if param in request.path_params:
        return "path"
    if param in request.query_params or request.method in ("GET", "HEAD", "DELETE"):
        return "query"
    return "body"


def _describe(loc: tuple[Any, ...] | list[Any], message: str) -> dict[str, str]:
    location = str(loc[0]) if loc else "request"
    rest = [str(part) for part in loc[1:]]
    if location == "body" and not rest:
        return {"param": "body", "location": "body", "message": message}
    return {"param": ".".join(rest) or location, "location": location, "message": message}


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    for e in exc.errors():
        if e.get("type") == "json_invalid":  # the docs promise 400 for a body that is not JSON
            where = e.get("loc", ())
            at = f" at character {where[1]}" if len(where) > 1 else ""
            reason = e.get("ctx", {}).get("error", "not valid JSON")
            return problem_response(
                request,
                400,
                "Malformed JSON",
                f"the request body is not valid JSON{at}: {reason}",
                param="body",
            )
    errors = [
        _describe(tuple(e.get("loc", ())), str(e.get("msg", "invalid"))) for e in exc.errors()
    ]
    first = (
        errors[0]
        if errors
        else {"param": "request", "location": "request", "message": "invalid request"}
    )
    where = (
        "request body"
        if first["location"] == "body" and first["param"] == "body"
        else (
            f"{first['location']} parameter '{first['param']}'"
            if first["location"] != "body"
            else f"body field '{first['param']}'"
        )
    )
    detail = f"{where}: {first['message']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more; see errors)"
    return problem_response(
        request, 422, "Invalid input", detail, param=first["param"], errors=errors
    )


async def _pydantic_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PydanticValidationError)
    errors = [
        {
            "param": ".".join(str(p) for p in e["loc"]) or "body",
            "location": "body",
            "message": e["msg"],
        }
        for e in exc.errors()
    ]
    first = errors[0]
    return problem_response(
        request,
        422,
        "Invalid input",
        f"{first['param']}: {first['message']}",
        param=first["param"],
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    title = HTTPStatus(exc.status_code).phrase
    detail = (
        str(exc.detail)
        if exc.detail and exc.detail != title
        else {
            404: f"no route {request.url.path}; see /docs for the API",
            405: f"method {request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, title)
    )
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed(request)) or headers.get("Allow", "")
    return problem_response(request, exc.status_code, title, detail, headers=headers or None)


def _allowed(request: Request) -> list[str]:
    """Every method documented for the request's path (Starlette lists only one route's)."""
    import re

    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = "^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, request.url.path):
            methods |= {m.upper() for m in operations}
    return sorted(methods)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled_error", path=request.url.path)
    request_id = getattr(request.state, "request_id", "?")
    return problem_response(
        request,
        500,
        "Internal error",
        f"an unexpected error happened; the server log has it under request id {request_id}",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every error of ``app`` through the problem handlers above."""
    app.add_exception_handler(MarketLakeError, _marketlake_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(PydanticValidationError, _pydantic_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problems with ``statuses``."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        title, detail = EXAMPLES.get(status, (HTTPStatus(status).phrase, HTTPStatus(status).phrase))
        example = {"type": problem_type(status), "title": title, "status": status, "detail": detail}
        out[status] = {
            "description": title,
            "content": {
                PROBLEM_JSON: {
                    "schema": {"$ref": "#/components/schemas/Problem"},
                    "example": example,
                }
            },
        }
    return out
