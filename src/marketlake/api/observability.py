"""Prometheus metrics, request ids and structured logs for the API.

Each app owns its own :class:`prometheus_client.CollectorRegistry` (two apps in
one process, as in the tests, do not collide). The middleware is plain ASGI
(no per-request task or body buffering): it gives every request an id (the
caller's ``X-Request-ID`` or a new one), binds it to the log context, times
the request and records it by route template and status.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from marketlake.config import redact
from marketlake.errors import MarketLakeError

log = structlog.get_logger("marketlake.api")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ApiMetrics:
    """The API's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "marketlake_http_requests",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "marketlake_http_request_duration_seconds",
            "Time to the response's last byte, by method, route and status",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.store_latency = Histogram(
            "marketlake_store_query_duration_seconds",
            "Store calls made by the API, by operation",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ingest_rows = Counter(
            "marketlake_ingest_rows",
            "Rows handled by API-started ingest jobs, by outcome",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.jobs = Counter(
            "marketlake_ingest_jobs",
            "API-started ingest jobs by final status",
            ["status"],
            registry=self.registry,
        )
        self.cache = Counter(
            "marketlake_bar_cache_lookups",
            "Bar cache lookups by result",
            ["result"],
            registry=self.registry,
        )

    @contextmanager
    def store_call(self, operation: str) -> Iterator[None]:
        """Time one store call as ``operation``."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.store_latency.labels(operation).observe(time.perf_counter() - began)


class FindingsCollector(Collector):
    """``marketlake_quality_findings``: stored validation findings by rule and severity."""

    def __init__(self, query: Callable[[], list[dict[str, Any]]]) -> None:
        self._query = query

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "marketlake_quality_findings",
            "Stored data-quality findings by rule and severity",
            labels=["rule", "severity"],
        )
        try:
            rows = self._query()
        except MarketLakeError as exc:
            log.warning("metrics_findings_unavailable", error=exc.message)
            rows = []
        for row in rows:
            family.add_metric([str(row["rule"]), str(row["severity"])], float(row["n"]))
        yield family


class ObservabilityMiddleware:
    """Request id, access log and request metrics for every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, *, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        # the labelled series per (method, route, status): ``labels()`` hashes and locks
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or os.urandom(8).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        began = time.perf_counter()
        status = 500
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, status, time.perf_counter() - began)
            structlog.contextvars.unbind_contextvars("request_id")

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        template = route_template(scope, status)
        method = scope["method"]
        series = self._series.get((method, template, status))
        if series is None:
            code = str(status)
            series = (
                self.metrics.requests.labels(method, template, code),
                self.metrics.latency.labels(method, template, code),
            )
            if len(self._series) < 10_000:  # templates are few; unmatched paths are one label
                self._series[(method, template, status)] = series
        series[0].inc()
        series[1].observe(seconds)
        if self.access_log:
            log.info(
                "request",
                method=method,
                path=scope["path"],
                route=template,
                status=status,
                ms=round(seconds * 1000, 2),
                client=_client(scope),
            )


def route_template(scope: Scope, status: int) -> str:
    """The matched route's path template (``/api/v1/bars/{symbol}``), for low-cardinality labels."""
    route = scope.get("route")
    # `path_format` drops the converters (`{symbol:path}` reads `{symbol}`)
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    path: str = scope["path"]
    if template is None:
        return path if status < 400 and not path.startswith("/static/") else "unmatched"
    if not path.startswith(template.split("{", 1)[0]):
        # routers included with a prefix report their own path; restore the prefix
        for prefix in ("/api/v1",):
            if path.startswith(prefix):
                return prefix + str(template)
    return str(template)


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")[:64]
            return text if text.isprintable() and text.strip() else None
    return None


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}" if client else None


def _orjson(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def _redact_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """A log processor: no credentials of a URI in any text value of a log line."""
    return {k: redact(v) if isinstance(v, str) else v for k, v in event.items()}


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    """Structured logs on stderr: JSON lines (``json=True``) or readable console lines."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        # configured once per server process, before it logs: each logger is built once
        cache_logger_on_first_use=True,
    )
