"""Request guards and response headers, as one plain ASGI middleware.

- A body larger than ``MARKETLAKE_API_MAX_BODY_BYTES`` is a 413 before any route runs
  (by ``Content-Length``, or counted while it arrives).
- A NUL character in the path, the query or the body is a 422: no text the API
  stores or looks up may hold one (PostgreSQL refuses it, which once showed as a 503).
- Every response carries ``X-Content-Type-Options``, ``X-Frame-Options``,
  ``Referrer-Policy`` and a ``Content-Security-Policy``: strict for the dashboard
  (only its own scripts and its API), looser for the Swagger and ReDoc pages
  (their inline start-up script), and nothing at all for API answers.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from marketlake.api.errors import problem_response

# style-src allows inline styles: the chart library's attribution logo is an SVG with a
# <style> inside; scripts stay strictly the dashboard's own files.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
_COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_NUL_ESCAPES = (b"\x00", b"\\u0000")


def _csp(path: str) -> bytes:
    if path.startswith(("/docs", "/redoc")):
        return DOCS_CSP.encode()
    if path.startswith(("/api/", "/metrics", "/openapi.json")):
        return API_CSP.encode()
    return DASHBOARD_CSP.encode()


class GuardMiddleware:
    """Body size and NUL checks on the way in, security headers on the way out."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [*_COMMON, (b"content-security-policy", _csp(scope["path"]))]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        query = scope.get("query_string", b"").lower()
        if "\x00" in scope["path"] or b"%00" in query or b"\x00" in query:
            await self._reject(scope, send_with_headers, 422, "path or query")
            return
        if scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send_with_headers)
            return
        body, too_large = await self._read_body(scope, receive)
        if too_large:
            await self._reject(scope, send_with_headers, 413, "body")
            return
        if any(escape in body for escape in _NUL_ESCAPES):
            await self._reject(scope, send_with_headers, 422, "body")
            return
        await self.app(scope, _replay(body, receive), send_with_headers)

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, bool]:
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return b"", True
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False

    async def _reject(self, scope: Scope, send: Send, status: int, where: str) -> None:
        request = Request(scope)
        if status == 413:
            response = problem_response(
                request,
                413,
                "Content too large",
                f"the request body is larger than {self.max_body_bytes:,} bytes "
                "(MARKETLAKE_API_MAX_BODY_BYTES); send less at once",
                param="body",
            )
        else:
            response = problem_response(
                request,
                422,
                "Invalid input",
                f"the request {where} contains a NUL character (\\u0000); remove it",
                param="body" if where == "body" else "query",
            )

        async def no_body() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, no_body, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands out the body read already, then waits as the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
