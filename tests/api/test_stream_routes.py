"""The live routes: metrics, alerts and their rules, portfolio, readiness, and the SSE streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from marketlake.api import create_app
from marketlake.store import Store
from marketlake.stream.alerts import RuleSet, parse_rule
from marketlake.stream.analytics import AnalyticsConfig
from marketlake.stream.binance import FeedState
from marketlake.stream.bus import MemoryBus
from marketlake.stream.bus.redis import RedisBus
from marketlake.stream.events import ALERTS_TOPIC, Batch, bars_table
from marketlake.stream.pipeline import Pipeline, persist
from marketlake.stream.worker import Worker
from tests.api.conftest import bearer, client_for, settings
from tests.conftest import REDIS_URL
from tests.stream.helpers import T0_US, batches_of, make_trades

RULE = {"id": "cross-100", "kind": "price_cross", "level": 100.0}


def _seed_live(store: Store, n: int = 600) -> Pipeline:
    """Process trades of BTCUSDT and ETHUSDT into metrics and price-cross alerts."""
    pipeline = Pipeline(AnalyticsConfig(window=10), RuleSet((parse_rule(RULE),)), store=store)
    for symbol, seed in (("BTCUSDT", 1), ("ETHUSDT", 2)):
        for batch in batches_of(make_trades(symbol, n, seed=seed), 200):
            pipeline.process(batch)
            persist(store, pipeline.take())
    return pipeline


@asynccontextmanager
async def api(store: Store, tmp_path: Path, **kw: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings(config_dir=tmp_path, **kw.pop("settings", {})), store, **kw)
    async for client in client_for(app):
        yield client


async def test_metrics_latest_and_per_symbol(duck: Store, tmp_path: Path) -> None:
    pipeline = _seed_live(duck)
    async with api(duck, tmp_path) as client:
        everything = (await client.get("/api/v1/metrics/latest")).json()
        one = (await client.get("/api/v1/metrics/latest", params={"symbol": "ethusdt"})).json()
        btc = await client.get("/api/v1/metrics/btcusdt")
        missing = await client.get("/api/v1/metrics/ZZZ")
    assert [m["symbol"] for m in everything] == ["BTCUSDT", "ETHUSDT"]
    assert [m["symbol"] for m in one] == ["ETHUSDT"]
    state = pipeline.analytics.get("BTCUSDT")
    assert btc.status_code == 200
    assert btc.json()["metrics"] == pytest.approx(state.values(), nan_ok=True)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


async def test_alerts_are_listed_newest_first_with_filters(duck: Store, tmp_path: Path) -> None:
    _seed_live(duck)
    stored = duck.select_rows("alerts", order_by="ts", descending=True)
    async with api(duck, tmp_path) as client:
        listed = (await client.get("/api/v1/alerts", params={"limit": 1000})).json()
        eth = (await client.get("/api/v1/alerts", params={"symbol": "ETHUSDT"})).json()
        since = stored[2]["ts"].isoformat()
        recent = (await client.get("/api/v1/alerts", params={"start": since})).json()
        bad = await client.get(
            "/api/v1/alerts", params={"start": "2024-03-06", "end": "2024-03-05"}
        )
    assert [a["id"] for a in listed][:3] == [a["id"] for a in stored][:3]
    assert len(listed) == len(stored) > 3
    assert {a["symbol"] for a in eth} == {"ETHUSDT"}
    assert len(recent) == 3
    assert bad.status_code == 422
    assert bad.json()["param"] == "start"


async def test_rules_are_listed_added_and_deleted(
    duck: Store, tmp_path: Path, keys: dict[str, str]
) -> None:
    (tmp_path / "alert_rules.yml").write_text(
        "rules:\n  - {id: file-rule, kind: price_above, threshold: 1}\n"
    )
    body = {
        "id": "api-rule",
        "kind": "pct_change",
        "window": "5m",
        "threshold": 2,
        "symbol": "btcusdt",
    }
    async with api(duck, tmp_path) as client:
        anonymous = await client.post("/api/v1/alerts/rules", json=body)
        added = await client.post("/api/v1/alerts/rules", json=body, headers=bearer(keys["write"]))
        again = await client.post("/api/v1/alerts/rules", json=body, headers=bearer(keys["write"]))
        bad = await client.post(
            "/api/v1/alerts/rules",
            headers=bearer(keys["write"]),
            json={"id": "x", "kind": "pct_change", "threshold": "a lot"},
        )
        nameless = await client.post(
            "/api/v1/alerts/rules",
            headers=bearer(keys["write"]),
            json={"id": "y", "kind": "price_above", "threshold": 1, "symbol": None},
        )
        listed = (await client.get("/api/v1/alerts/rules")).json()
        deleted = await client.delete(
            "/api/v1/alerts/rules/api-rule", headers=bearer(keys["write"])
        )
        file_rule = await client.delete(
            "/api/v1/alerts/rules/file-rule", headers=bearer(keys["write"])
        )
        after = (await client.get("/api/v1/alerts/rules")).json()
    assert anonymous.status_code == 401
    assert added.status_code == 201
    assert added.json()["window"] == 300
    assert added.json()["symbol"] == "BTCUSDT"
    assert again.status_code == 409
    assert nameless.status_code == 422  # not stored as a rule for a symbol called NONE
    assert bad.status_code == 422
    assert {e["param"] for e in bad.json()["errors"]} >= {
        "pct_change.threshold",
        "pct_change.window",
    }
    assert [(r["id"], r["source"]) for r in listed] == [("file-rule", "file"), ("api-rule", "api")]
    assert deleted.status_code == 204
    assert file_rule.status_code == 404
    assert "editing the file" in file_rule.json()["detail"]
    assert [r["id"] for r in after] == ["file-rule"]


async def test_portfolio_is_valued_at_the_latest_prices(duck: Store, tmp_path: Path) -> None:
    pipeline = _seed_live(duck)
    (tmp_path / "portfolio.yml").write_text(
        "positions:\n  - {symbol: BTCUSDT, quantity: 2, average_price: 90}\n"
        "  - {symbol: SOLUSDT, quantity: 1, average_price: 10}\n"
    )
    async with api(duck, tmp_path) as client:
        body = (await client.get("/api/v1/portfolio")).json()
    price = pipeline.analytics.get("BTCUSDT").price
    btc, sol = body["positions"]
    assert btc["unrealized_pnl"] == pytest.approx((price - 90) * 2)
    assert sol["price"] is None
    assert body["total_unrealized_pnl"] == pytest.approx((price - 90) * 2)


async def test_ready_shows_the_feed_connection_state(duck: Store, tmp_path: Path) -> None:
    bus = MemoryBus()
    feed = FeedState("binance", ["BTCUSDT"], state="connected")
    feed.last_message_us = feed.as_dict()["updated_us"]
    await bus.set_status("feed:binance", feed.as_dict())
    other = FeedState("kraken", ["XBTUSD"], state="reconnecting", last_error="refused")
    await bus.set_status("feed:kraken", other.as_dict())
    async with api(duck, tmp_path, bus=bus) as client:
        checks = (await client.get("/api/v1/ready")).json()["checks"]
    assert checks["feed:binance"].startswith("connected, last message 0.")
    assert checks["feed:kraken"] == "reconnecting: refused"


# -- server-sent events, through a real HTTP server --------------------------------------


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` on a real uvicorn server in this event loop; a client pointed at it."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield client
    server.should_exit = True
    await task


async def read_events(
    client: httpx.AsyncClient,
    url: str,
    n: int,
    *,
    headers: dict[str, str] | None = None,
    started: asyncio.Event | None = None,
) -> list[tuple[str | None, str, Any]]:
    """The first ``n`` events of an SSE stream as (id, event, data)."""
    events: list[tuple[str | None, str, Any]] = []
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        if started is not None:
            started.set()
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "event" in fields:
                    events.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
                    if len(events) == n:
                        return events
                fields = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                fields[key] = value
    return events


async def test_alert_stream_resumes_after_last_event_id(duck: Store, tmp_path: Path) -> None:
    bus = MemoryBus()
    app = create_app(settings(config_dir=tmp_path), duck, bus)
    async with serving(app) as client:
        started = asyncio.Event()
        reader = asyncio.create_task(
            read_events(client, "/api/v1/alerts/stream", 2, started=started)
        )
        await started.wait()
        await asyncio.sleep(0.05)
        for n in range(3):
            await bus.publish_event(ALERTS_TOPIC, {"symbol": "BTCUSDT", "n": n})
        first, second = await asyncio.wait_for(reader, 5)
        assert (first[1], first[2]["n"], second[2]["n"]) == ("alert", 0, 1)
        resumed = await asyncio.wait_for(
            read_events(
                client, "/api/v1/alerts/stream", 2, headers={"Last-Event-ID": first[0] or ""}
            ),
            5,
        )
        assert [e[2]["n"] for e in resumed] == [1, 2]
        bad = await client.get("/api/v1/alerts/stream", headers={"Last-Event-ID": "1-0"})
        assert bad.status_code == 422
        assert bad.json()["param"] == "Last-Event-ID"


async def test_live_stream_sends_trades_and_bars_of_the_asked_symbols(
    duck: Store, tmp_path: Path
) -> None:
    bus = MemoryBus()
    app = create_app(settings(config_dir=tmp_path), duck, bus)
    trades = make_trades("BTCUSDT", 5)
    bar = bars_table(
        "BTCUSDT",
        "1m",
        "binance",
        {
            "ts": [T0_US],
            "open": [1.0],
            "high": [2.0],
            "low": [0.5],
            "close": [1.5],
            "volume": [3.0],
            "trades": [4],
            "vwap": [1.2],
        },
    )
    async with serving(app) as client:
        started = asyncio.Event()
        reader = asyncio.create_task(
            read_events(client, "/api/v1/stream/live?symbols=btcusdt", 2, started=started)
        )
        await started.wait()
        await asyncio.sleep(0.05)
        await bus.publish(
            [
                Batch("trade", "ETHUSDT", make_trades("ETHUSDT", 3)),
                Batch("trade", "BTCUSDT", trades),
                Batch("bar", "BTCUSDT", bar, "live", final=False),
            ]
        )
        (_, kind1, data1), (_, kind2, data2) = await asyncio.wait_for(reader, 5)
    assert kind1 == "trades"
    assert [t["price"] for t in data1["trades"]] == trades.column("price").to_pylist()
    assert data1["trades"][0]["ts"].endswith("Z")
    assert (kind2, data2["final"], data2["bars"][0]["close"]) == ("bar", False, 1.5)


async def test_replay_streams_bars_metrics_alerts_and_an_end(seeded: Store, tmp_path: Path) -> None:
    (tmp_path / "alert_rules.yml").write_text(
        "rules:\n  - {id: any-drop, kind: drawdown_below, threshold: -0.0001}\n"
    )
    app = create_app(settings(config_dir=tmp_path), seeded, MemoryBus())
    url = "/api/v1/replay/AAPL?timeframe=1m&start=2024-03-04T14:30:00Z&end=2024-03-04T15:00:00Z"
    async with serving(app) as client:
        events = await asyncio.wait_for(read_events(client, url, 1000), 10)
        missing = await client.get("/api/v1/replay/ZZZ?timeframe=1m")
        monthly = await client.get("/api/v1/replay/AAPL?timeframe=1mo")
        crawl = await client.get("/api/v1/replay/AAPL?timeframe=1m&speed=1e-300")
    kinds = [e[1] for e in events]
    bars = seeded.read_bars("AAPL", "1m", *_range("2024-03-04T14:30", "2024-03-04T15:00")).table
    assert kinds.count("bar") == bars.num_rows > 0
    assert kinds[-1] == "end"
    assert "alert" in kinds
    assert [e[2]["bar"]["close"] for e in events if e[1] == "bar"] == bars.column(
        "close"
    ).to_pylist()
    assert [e[0] for e in events] == [str(i) for i in range(len(events))]
    assert missing.status_code == 404
    assert monthly.status_code == 422
    assert crawl.status_code == 422
    assert "between 0.01 and" in crawl.json()["detail"]


def _range(start: str, end: str) -> tuple[Any, Any]:
    from marketlake.schema import parse_time

    return parse_time(start), parse_time(end)


async def test_worker_alert_reaches_an_sse_client_and_the_store(
    duck: Store, tmp_path: Path
) -> None:
    """Trades in, alert out: the same alert id on the stream and in the alerts table."""
    (tmp_path / "alert_rules.yml").write_text(
        "rules:\n  - {id: cross-100, kind: price_cross, level: 100.0}\n"
    )
    bus = MemoryBus()
    app = create_app(settings(config_dir=tmp_path), duck, bus)
    worker = Worker(settings(config_dir=tmp_path), duck, bus, block_ms=50)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop, await bus.consumer("workers", "w")))
    async with serving(app) as client:
        started = asyncio.Event()
        reader = asyncio.create_task(
            read_events(client, "/api/v1/alerts/stream", 1, started=started)
        )
        await started.wait()
        await asyncio.sleep(0.05)
        await bus.publish(batches_of(make_trades("BTCUSDT", 300, seed=1), 100))
        [(_, kind, alert)] = await asyncio.wait_for(reader, 5)
    stop.set()
    await running
    assert kind == "alert"
    assert alert["rule_id"] == "cross-100"
    assert alert["id"] in {a["id"] for a in duck.select_rows("alerts")}


@pytest.mark.redis
async def test_alert_stream_on_redis_resumes_by_stream_id(
    duck: Store, tmp_path: Path, redis_prefix: str
) -> None:
    bus = RedisBus(REDIS_URL, prefix=redis_prefix)
    app = create_app(settings(config_dir=tmp_path, bus=REDIS_URL), duck, bus)
    first = await bus.publish_event(ALERTS_TOPIC, {"symbol": "BTCUSDT", "n": 0})
    await bus.publish_event(ALERTS_TOPIC, {"symbol": "ETHUSDT", "n": 1})
    await bus.publish_event(ALERTS_TOPIC, {"symbol": "BTCUSDT", "n": 2})
    async with serving(app) as client:
        events = await asyncio.wait_for(
            read_events(
                client, "/api/v1/alerts/stream?symbol=BTCUSDT", 1, headers={"Last-Event-ID": first}
            ),
            5,
        )
        bad = await client.get("/api/v1/alerts/stream", headers={"Last-Event-ID": "7"})
    assert [e[2]["n"] for e in events] == [2]
    assert events[0][0] not in (None, first)
    assert bad.status_code == 422
    await bus.close()


async def test_sse_streams_per_client_are_capped_and_given_back(
    duck: Store, tmp_path: Path
) -> None:
    app = create_app(settings(config_dir=tmp_path, api_sse_clients_per_client=2), duck, MemoryBus())
    ctx = app.state.ctx
    async with serving(app) as client, contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(client.stream("GET", "/api/v1/stream/live"))
        assert first.status_code == 200
        # a request refused after its slot was taken gives the slot back at once
        for _ in range(3):
            bad = await client.get("/api/v1/alerts/stream", headers={"Last-Event-ID": "x"})
            assert bad.status_code == 422
        second = await stack.enter_async_context(client.stream("GET", "/api/v1/alerts/stream"))
        assert second.status_code == 200
        third = await client.get("/api/v1/alerts/stream")
        assert third.status_code == 429
        assert "2 live streams are open for this client" in third.json()["detail"]
        assert third.headers["retry-after"] == "5"
        await stack.aclose()  # both streams closed by the client: their slots come back
        for _ in range(200):
            if not ctx.streams.open:
                break
            await asyncio.sleep(0.02)
        assert ctx.streams.open == {}
        async with client.stream("GET", "/api/v1/alerts/stream") as again:
            assert again.status_code == 200
