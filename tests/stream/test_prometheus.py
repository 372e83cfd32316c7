"""Prometheus gauges of the stream and worker processes."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from marketlake.errors import ConfigError
from marketlake.stream.binance import FeedState
from marketlake.stream.bus.redis import RedisBus
from marketlake.stream.events import now_us
from marketlake.stream.prometheus import (
    FeedCollector,
    WorkerCollector,
    redis_backlog,
    serve_metrics,
)
from tests.conftest import REDIS_URL
from tests.stream.helpers import batches_of, make_trades


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_feed_gauges_are_served_and_age_is_omitted_outside_the_window() -> None:
    connected = FeedState(
        "binance", ["BTCUSDT"], state="connected", last_message_us=now_us() - 2_000_000
    )
    waiting = FeedState("kraken", ["XBTUSD"], state="outside-window", last_message_us=now_us())
    port = _free_port()
    assert serve_metrics(port, FeedCollector(lambda: [connected, waiting])) is not None
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'marketlake_feed_connected{feed="binance"} 1.0' in text
    assert 'marketlake_feed_connected{feed="kraken"} 0.0' in text
    age = next(
        line
        for line in text.splitlines()
        if line.startswith('marketlake_feed_last_message_age_seconds{feed="binance"}')
    )
    assert 2.0 <= float(age.split()[-1]) < 10
    assert 'marketlake_feed_last_message_age_seconds{feed="kraken"}' not in text


def test_port_zero_serves_nothing() -> None:
    assert serve_metrics(0, FeedCollector(list)) is None


def test_worker_gauges_without_a_lag_yet() -> None:
    collected = list(WorkerCollector(lambda: None, dict).collect())
    assert [m.name for m in collected] == [
        "marketlake_stream_lag_seconds",
        "marketlake_bus_pending_messages",
    ]
    assert all(not m.samples for m in collected)


@pytest.mark.redis
def test_bus_backlog_counts_unread_and_pending_entries(redis_prefix: str) -> None:
    async def setup() -> list[str]:
        bus = RedisBus(REDIS_URL, prefix=redis_prefix, shards=1)
        consumer = await bus.consumer("workers", "w1")
        await bus.publish(batches_of(make_trades("BTCUSDT", 50), 10))
        taken = await consumer.fetch(2, 100)
        await consumer.ack(taken[:1])
        keys = bus.raw_keys()
        await bus.close()
        return keys

    keys = asyncio.run(setup())
    backlog = redis_backlog(REDIS_URL, [*keys, f"{redis_prefix}missing"], "workers")
    assert backlog() == {(keys[0], "workers"): 4}  # one delivered unacked, three unread
    collector = WorkerCollector(lambda: 1.5, backlog)
    lag, pending = collector.collect()
    assert lag.samples[0].value == 1.5
    assert pending.samples[0].labels == {"stream": keys[0], "group": "workers"}


def test_cli_reports_a_busy_metrics_port() -> None:
    from marketlake.cli.stream import _metrics_server

    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        with pytest.raises(ConfigError, match="MARKETLAKE_METRICS_PORT"):
            _metrics_server(sock.getsockname()[1], FeedCollector(list))
