"""A scripted vendor for provider tests: recorded payloads served through httpx.MockTransport.

``Vendor().on(path, file=..., status=..., headers=...)`` queues one answer; answers
are given in the order queued, each to a request whose path (and, when given,
query parameters) match. Every request is recorded, so tests can assert what
was asked. A request nobody scripted fails the test loudly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from marketlake.config import Settings
from marketlake.providers.base import Provider

DATA = Path(__file__).parent.parent / "data"


def payload(provider: str, name: str) -> bytes:
    """The bytes of a recorded vendor answer under ``tests/data/<provider>/``."""
    return (DATA / provider / name).read_bytes()


@dataclass
class _Answer:
    path: str
    params: dict[str, str] | None
    status: int
    body: bytes
    headers: dict[str, str]
    times: int
    error: type[Exception] | None = None


@dataclass
class Vendor:
    """Answers requests from a queue of recorded payloads and records every request."""

    provider: str
    answers: list[_Answer] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)

    def on(
        self,
        path: str,
        file: str | None = None,
        *,
        params: dict[str, Any] | None = None,
        status: int = 200,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        error: type[Exception] | None = None,
    ) -> Vendor:
        data = payload(self.provider, file) if file else (body or b"")
        wanted = None if params is None else {k: str(v) for k, v in params.items()}
        content_type = "text/html" if file and file.endswith(".html") else "application/json"
        self.answers.append(
            _Answer(
                path,
                wanted,
                status,
                data,
                {"content-type": content_type, **(headers or {})},
                times,
                error,
            )
        )
        return self

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        query = dict(request.url.params)
        for answer in self.answers:
            if answer.times <= 0 or answer.path != request.url.path:
                continue
            if answer.params is not None and any(
                query.get(k) != v for k, v in answer.params.items()
            ):
                continue
            answer.times -= 1
            if answer.error is not None:
                raise answer.error("scripted transport failure", request=request)
            return httpx.Response(answer.status, content=answer.body, headers=answer.headers)
        raise AssertionError(f"no recorded answer for {request.url}")

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))

    @property
    def params(self) -> list[dict[str, str]]:
        """The query parameters of every request, in order."""
        return [dict(r.url.params) for r in self.requests]


class Sleeps:
    """Stands in for asyncio.sleep: records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(round(seconds, 3))


def make(cls: type[Provider], vendor: Vendor, **settings: Any) -> tuple[Any, Sleeps]:
    """A provider on the scripted vendor that records its sleeps instead of sleeping."""
    urls = {
        "yahoo_url": "https://yahoo.test",
        "alpaca_url": "https://alpaca.test",
        "binance_url": "https://binance.test",
    }
    provider: Any = cls(Settings(**{**urls, **settings}), vendor.client())
    sleeps = Sleeps()
    provider.sleep = sleeps
    provider.limiter.sleep = sleeps
    return provider, sleeps


async def collect(
    provider: Provider, symbol: str, timeframe: str, start: Any, end: Any
) -> list[Any]:
    """Every table a provider yields for one request."""
    return [t async for t in provider.fetch_bars(symbol, timeframe, start, end)]
