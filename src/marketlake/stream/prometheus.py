"""Prometheus gauges of the live processes, served on ``MARKETLAKE_METRICS_PORT``.

``marketlake stream`` exports ``marketlake_feed_connected{feed}`` and
``marketlake_feed_last_message_age_seconds{feed}`` (no sample outside an
ingestion window); ``marketlake worker`` exports ``marketlake_stream_lag_seconds``
(exchange event to processing) and ``marketlake_bus_pending_messages{stream,
group}`` (entries not yet acknowledged: delivered-but-pending plus not yet read).
Values are read when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from marketlake.stream.binance import FeedState
from marketlake.stream.events import now_us


class FeedCollector(Collector):
    """Connection gauges of the feeds of this process."""

    def __init__(self, states: Callable[[], list[FeedState]]) -> None:
        self.states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        connected = GaugeMetricFamily(
            "marketlake_feed_connected",
            "1 while the feed's websocket is connected",
            labels=["feed"],
        )
        age = GaugeMetricFamily(
            "marketlake_feed_last_message_age_seconds",
            "Seconds since the feed's last message",
            labels=["feed"],
        )
        for state in self.states():
            connected.add_metric([state.feed], 1.0 if state.state == "connected" else 0.0)
            if state.last_message_us is not None and state.state != "outside-window":
                age.add_metric([state.feed], (now_us() - state.last_message_us) / 1e6)
        yield connected
        yield age


class WorkerCollector(Collector):
    """Lag and backlog of a worker; ``backlog`` returns ``{(stream, group): entries}``."""

    def __init__(
        self, lag_s: Callable[[], float | None], backlog: Callable[[], dict[tuple[str, str], int]]
    ) -> None:
        self.lag_s = lag_s
        self.backlog = backlog

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "marketlake_stream_lag_seconds",
            "Seconds from the newest exchange event to its processing",
        )
        value = self.lag_s()
        if value is not None:
            lag.add_metric([], value)
        yield lag
        pending = GaugeMetricFamily(
            "marketlake_bus_pending_messages",
            "Bus entries not acknowledged yet",
            labels=["stream", "group"],
        )
        for (stream, group), count in self.backlog().items():
            pending.add_metric([stream, group], float(count))
        yield pending


def redis_backlog(
    uri: str, keys: list[str], group: str
) -> Callable[[], dict[tuple[str, str], int]]:
    """Per stream key: pending plus unread entries of ``group`` (``XINFO GROUPS``)."""
    import redis

    client: Any = redis.Redis.from_url(uri, socket_timeout=2)

    def backlog() -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for key in keys:
            try:
                groups = client.xinfo_groups(key)
            except redis.RedisError:
                continue
            for info in groups:
                name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
                if name == group:
                    out[(key, group)] = int(info.get("pending") or 0) + int(info.get("lag") or 0)
        return out

    return backlog


def serve_metrics(port: int, *collectors: Collector) -> CollectorRegistry | None:
    """Serve ``collectors`` on ``port`` in a background thread (port 0: not at all)."""
    if port <= 0:
        return None
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    start_http_server(port, registry=registry)
    return registry
