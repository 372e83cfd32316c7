"""Instruments, prices, jobs, quality reports, health and the site routes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from marketlake.schema import parse_time
from marketlake.store import Store
from marketlake.store.tables import SCHEMA_VERSION
from tests.api.conftest import bearer


async def test_health_says_ok_with_the_version(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/health")
    assert r.json() == {"status": "ok", "version": "0.1.0"}


async def test_ready_checks_the_store(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/ready")
    assert r.status_code == 200
    assert r.json()["checks"]["store"] == f"ok (schema {SCHEMA_VERSION})"


async def test_ready_is_503_when_the_store_is_gone(
    make_client: Callable[..., Any], seeded: Store
) -> None:
    async with make_client() as client:
        seeded.close()
        r = await client.get("/api/v1/ready")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"].startswith("store: ")


async def test_ready_is_503_when_the_redis_bus_is_unreachable(
    make_client: Callable[..., Any],
) -> None:
    async with make_client(bus="redis://127.0.0.1:1/0", api_rate_limit_per_minute=0) as client:
        r = await client.get("/api/v1/ready")
    assert r.status_code == 503
    assert r.json()["detail"].startswith("bus redis://127.0.0.1:1/0: ")


async def test_instruments_crud_round_trip(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    auth = bearer(keys["write"])
    listed = (await client.get("/api/v1/instruments")).json()
    assert [i["symbol"] for i in listed] == ["AAPL", "BTCUSDT"]
    created = await client.post(
        "/api/v1/instruments",
        headers=auth,
        json={"symbol": "msft", "name": "Microsoft", "exchange": "XNAS"},
    )
    assert created.status_code == 201
    assert created.headers["location"] == "/api/v1/instruments/MSFT"
    assert created.json()["symbol"] == "MSFT"
    again = await client.post("/api/v1/instruments", headers=auth, json={"symbol": "MSFT"})
    assert again.status_code == 409
    replaced = await client.put(
        "/api/v1/instruments/MSFT",
        headers=auth,
        json={"name": "Microsoft Corp.", "exchange": "XNAS", "currency": "USD"},
    )
    assert replaced.status_code == 200
    assert (await client.get("/api/v1/instruments/msft")).json() == {
        "symbol": "MSFT",
        "name": "Microsoft Corp.",
        "asset_class": "stock",
        "exchange": "XNAS",
        "currency": "USD",
        "timezone": "America/New_York",
        "active": True,
        "auto_registered": False,
    }
    fresh = await client.put(
        "/api/v1/instruments/ETHUSDT",
        headers=auth,
        json={"asset_class": "crypto", "timezone": "UTC"},
    )
    assert fresh.status_code == 201
    assert (await client.delete("/api/v1/instruments/MSFT", headers=auth)).status_code == 204
    assert (await client.get("/api/v1/instruments/MSFT")).status_code == 404
    assert (await client.delete("/api/v1/instruments/MSFT", headers=auth)).status_code == 404


async def test_delete_with_data_removes_the_bars(
    client: httpx.AsyncClient, seeded: Store, keys: dict[str, str]
) -> None:
    r = await client.delete(
        "/api/v1/instruments/AAPL", params={"with_data": "true"}, headers=bearer(keys["write"])
    )
    assert r.status_code == 204
    assert seeded.count_bars("AAPL") == 0
    assert (await client.get("/api/v1/bars/AAPL")).status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"symbol": "bad symbol!"}, "symbol"),
        ({"symbol": "X", "asset_class": "bond"}, "asset_class"),
        ({"symbol": "X", "timezone": "Mars/Base"}, "timezone"),
        ({"symbol": "X", "colour": "red"}, "colour"),
        ({}, "symbol"),
    ],
)
async def test_bad_instrument_bodies_are_422(
    client: httpx.AsyncClient, keys: dict[str, str], body: dict[str, Any], param: str
) -> None:
    r = await client.post("/api/v1/instruments", json=body, headers=bearer(keys["write"]))
    assert r.status_code == 422
    assert r.json()["param"] == param


async def test_put_with_a_bad_timezone_is_422(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    r = await client.put(
        "/api/v1/instruments/AAPL", json={"timezone": "Nowhere/Town"}, headers=bearer(keys["write"])
    )
    assert r.status_code == 422
    assert r.json()["param"] == "timezone"
    assert "unknown IANA timezone" in r.json()["detail"]


async def test_body_that_is_not_json_is_400(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    r = await client.post(
        "/api/v1/instruments",
        content=b"{nope",
        headers=bearer(keys["write"]) | {"Content-Type": "application/json"},
    )
    assert r.status_code == 400  # docs/api.md: malformed JSON is a 400
    assert "JSON" in r.json()["detail"]


async def test_prices_are_the_newest_closes_oldest_first(
    client: httpx.AsyncClient, seeded: Store
) -> None:
    body = (await client.get("/api/v1/prices/AAPL", params={"limit": 3})).json()
    table = seeded.read_bars("AAPL", "1m").table
    newest = table.slice(table.num_rows - 3).to_pylist()
    assert body["symbol"] == "AAPL"
    assert body["timeframe"] == "1m"
    assert [p["price"] for p in body["prices"]] == [r["close"] for r in newest]
    assert [parse_time(p["ts"]) for p in body["prices"]] == [r["ts"] for r in newest]


async def test_prices_without_cache_read_the_store(
    make_client: Callable[..., Any], seeded: Store
) -> None:
    async with make_client(api_cache_max_rows=0) as client:
        body = (await client.get("/api/v1/prices/BTCUSDT", params={"limit": 2})).json()
        empty = (await client.get("/api/v1/prices/BTCUSDT", params={"timeframe": "1h"})).json()
    newest = seeded.latest_bar("BTCUSDT", "1m")
    assert newest is not None
    assert body["prices"][-1]["price"] == newest["close"]
    assert empty["prices"] == []


async def test_latest_price_is_the_close_of_the_last_bar(
    client: httpx.AsyncClient, seeded: Store
) -> None:
    newest = seeded.latest_bar("BTCUSDT", "1m")
    assert newest is not None
    body = (await client.get("/api/v1/prices/BTCUSDT/latest")).json()
    assert body == {
        "symbol": "BTCUSDT",
        "price": newest["close"],
        "ts": "2024-03-06T00:00:00+00:00",
        "source": "bar",
        "timeframe": "1m",
        "bar_ts": "2024-03-05T23:59:00+00:00",
        "final": True,
    }


async def test_latest_price_of_a_forming_monthly_roll_up_keeps_the_5m_bar_time(
    make_client: Callable[..., Any], seeded: Store
) -> None:
    """MSFT answered with ts = now and timeframe 1mo although its newest 5m bar was the
    day before: a forming bar does not stand for the time of the request."""
    from datetime import UTC, datetime, timedelta

    from marketlake.schema import utcnow
    from marketlake.timeseries.aggregate import rollup
    from tests.conftest import bars_for

    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = today - timedelta(days=1)
    five = bars_for(["ETHUSDT"], "5m", yesterday.isoformat(), today.isoformat())  # 24/7
    seeded.ensure_instruments(["ETHUSDT"])
    seeded.write_bars(five)
    seeded.write_bars(rollup(five, "1mo"))
    async with make_client() as client:
        body = (await client.get("/api/v1/prices/ETHUSDT/latest")).json()
    last = five.slice(five.num_rows - 1).to_pylist()[0]
    assert body["timeframe"] == "5m"
    assert body["price"] == last["close"]
    assert parse_time(body["bar_ts"]) == last["ts"]
    assert parse_time(body["ts"]) == last["ts"] + timedelta(minutes=5)
    assert parse_time(body["ts"]) <= datetime.now(UTC) - timedelta(minutes=1)
    assert body["final"] is True


async def test_latest_price_prefers_a_newer_trade(client: httpx.AsyncClient, seeded: Store) -> None:
    import pyarrow as pa

    seeded.write_trades(
        pa.table(
            {
                "symbol": ["BTCUSDT"],
                "ts": pa.array([parse_time("2024-03-06T00:00:05Z")], pa.timestamp("us", tz="UTC")),
                "price": [70000.5],
                "size": [0.1],
                "side": ["buy"],
                "trade_id": ["t1"],
                "source": ["test"],
            }
        )
    )
    body = (await client.get("/api/v1/prices/BTCUSDT/latest")).json()
    assert body == {
        "symbol": "BTCUSDT",
        "price": 70000.5,
        "ts": "2024-03-06T00:00:05+00:00",
        "source": "trade",
        "timeframe": None,
        "bar_ts": None,
        "final": True,
    }


async def test_latest_price_of_a_symbol_without_data_is_404(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    await client.post(
        "/api/v1/instruments", json={"symbol": "EMPTY"}, headers=bearer(keys["write"])
    )
    r = await client.get("/api/v1/prices/EMPTY/latest")
    assert r.status_code == 404
    assert (await client.get("/api/v1/prices/NOPE/latest")).status_code == 404


async def test_ingest_run_answers_202_and_the_job_finishes(
    client: httpx.AsyncClient, seeded: Store, keys: dict[str, str]
) -> None:
    r = await client.post(
        "/api/v1/ingest/run",
        headers=bearer(keys["write"]),
        json={
            "provider": "synthetic",
            "symbols": ["ethusdt"],
            "timeframe": "1h",
            "start": "2024-03-04",
            "end": "2024-03-05",
        },
    )
    assert r.status_code == 202
    job_id = r.json()["job_id"]
    assert r.json() == {"job_id": job_id, "status": "pending", "url": f"/api/v1/jobs/{job_id}"}
    assert r.headers["location"] == f"/api/v1/jobs/{job_id}"
    job = await _finished(client, job_id)
    assert job["status"] == "succeeded"
    assert job["params"]["symbols"] == ["ETHUSDT"]
    assert job["summary"]["symbols"][0]["inserted"] == 24
    assert seeded.count_bars("ETHUSDT", "1h") == 24
    listed = (await client.get("/api/v1/jobs", params={"kind": "ingest"})).json()
    assert listed[0]["id"] == job_id
    metrics = (await client.get("/metrics")).text
    assert 'marketlake_ingest_rows_total{outcome="inserted",provider="synthetic"} 24.0' in metrics
    assert 'marketlake_ingest_jobs_total{status="succeeded"} 1.0' in metrics


async def _finished(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    for _ in range(200):
        job: dict[str, Any] = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if job["status"] not in ("pending", "running"):
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


async def test_ingest_with_a_period_covers_that_period(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    r = await client.post(
        "/api/v1/ingest/run",
        headers=bearer(keys["write"]),
        json={
            "provider": "synthetic",
            "symbols": ["BTCUSDT"],
            "timeframe": "1d",
            "period": "3d",
            "end": "2024-03-10",
        },
    )
    job = await _finished(client, r.json()["job_id"])
    assert job["params"]["start"] == "2024-03-07T00:00:00+00:00"
    assert job["summary"]["symbols"][0]["fetched"] == 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"provider": "nope", "symbols": ["AAPL"], "start": "2024-01-01"}, "provider"),
        (
            {
                "provider": "synthetic",
                "symbols": ["AAPL"],
                "timeframe": "9q",
                "start": "2024-01-01",
            },
            "timeframe",
        ),
        ({"provider": "synthetic", "symbols": [], "start": "2024-01-01"}, "symbols"),
        ({"provider": "synthetic", "symbols": ["AAPL"]}, "start"),
        (
            {
                "provider": "synthetic",
                "symbols": ["AAPL"],
                "start": "2024-02-01",
                "end": "2024-01-01",
            },
            "start",
        ),
        (
            {"provider": "synthetic", "symbols": ["AAPL"], "start": "2024-01-01", "period": "1d"},
            "period",
        ),
        ({"provider": "synthetic", "symbols": ["AAPL"], "period": "often"}, "period"),
        ({"provider": "synthetic", "symbols": ["no way"], "start": "2024-01-01"}, "symbol"),
    ],
)
async def test_bad_ingest_requests_are_422_and_record_no_job(
    client: httpx.AsyncClient, seeded: Store, keys: dict[str, str], body: dict[str, Any], param: str
) -> None:
    r = await client.post("/api/v1/ingest/run", json=body, headers=bearer(keys["write"]))
    assert r.status_code == 422
    assert r.json()["param"] == param
    assert "--" not in r.json()["detail"]  # the API names its fields, not CLI options
    assert seeded.list_jobs() == []


async def test_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/jobs/doesnotexist")
    assert r.status_code == 404
    assert "unknown job doesnotexist" in r.json()["detail"]


def _report(store: Store) -> None:
    store.insert_row(
        "quality_reports",
        {
            "id": "r1",
            "job_id": None,
            "scope": json.dumps({"symbols": ["AAPL"], "timeframe": "1m"}),
            "summary": json.dumps({"findings": 2}),
            "created_at": parse_time("2024-03-06"),
        },
    )
    store.insert_row(
        "quality_reports",
        {
            "id": "r2",
            "job_id": "j9",
            "scope": "{}",
            "summary": "{}",
            "created_at": parse_time("2024-03-07"),
        },
    )
    for i, severity in enumerate(("error", "warning")):
        store.insert_row(
            "quality_findings",
            {
                "report_id": "r1",
                "rule": "ohlc" if i == 0 else "gaps",
                "severity": severity,
                "symbol": "AAPL",
                "timeframe": "1m",
                "ts": parse_time(f"2024-03-04T15:0{i}:00Z"),
                "end_ts": None,
                "values": json.dumps({"high": 9.5, "low": 10.1}),
                "message": f"finding {i}",
            },
        )


async def test_quality_reports_list_newest_first_and_filter(
    client: httpx.AsyncClient, seeded: Store
) -> None:
    _report(seeded)
    listed = (await client.get("/api/v1/quality/reports")).json()
    assert [r["id"] for r in listed] == ["r2", "r1"]
    only = (await client.get("/api/v1/quality/reports", params={"symbol": "aapl"})).json()
    assert [r["id"] for r in only] == ["r1"]
    assert only[0]["scope"] == {"symbols": ["AAPL"], "timeframe": "1m"}


async def test_quality_report_has_its_findings(client: httpx.AsyncClient, seeded: Store) -> None:
    _report(seeded)
    report = (await client.get("/api/v1/quality/reports/r1")).json()
    assert report["findings_total"] == 2
    assert report["findings"][0] == {
        "rule": "ohlc",
        "severity": "error",
        "symbol": "AAPL",
        "timeframe": "1m",
        "ts": "2024-03-04T15:00:00Z",
        "end_ts": None,
        "values": {"high": 9.5, "low": 10.1},
        "message": "finding 0",
    }
    warnings = (
        await client.get("/api/v1/quality/reports/r1", params={"severity": "warning"})
    ).json()
    assert [f["rule"] for f in warnings["findings"]] == ["gaps"]
    metrics = (await client.get("/metrics")).text
    assert 'marketlake_quality_findings{rule="ohlc",severity="error"} 1.0' in metrics
    assert (await client.get("/api/v1/quality/reports/nope")).status_code == 404


async def test_unknown_route_and_wrong_method_are_problems(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    wrong = await client.delete("/api/v1/health")
    assert wrong.status_code == 405
    assert wrong.json()["detail"] == "method DELETE is not allowed on /api/v1/health"


async def test_home_docs_and_their_assets_are_served_locally(client: httpx.AsyncClient) -> None:
    assert "MarketLake" in (await client.get("/")).text
    docs = (await client.get("/docs")).text
    assert "/static/docs/swagger-ui-bundle.js" in docs
    assert "cdn" not in docs.lower()
    js = await client.get("/static/docs/swagger-ui-bundle.js")
    assert js.status_code == 200
    assert len(js.content) > 500_000
    assert (await client.get("/static/docs/swagger-ui.css")).status_code == 200
    redoc = (await client.get("/redoc")).text
    assert "/static/docs/redoc.standalone.js" in redoc
    assert "fonts.googleapis" not in redoc


async def test_metrics_count_requests_by_route_and_status(client: httpx.AsyncClient) -> None:
    await client.get("/api/v1/bars/AAPL", params={"limit": 5})
    await client.get("/api/v1/bars/ZZZ")
    text = (await client.get("/metrics")).text
    assert (
        'marketlake_http_requests_total{method="GET",route="/api/v1/bars/{symbol}",'
        'status="200"} 1.0'
    ) in text
    assert (
        'marketlake_http_requests_total{method="GET",route="/api/v1/bars/{symbol}",'
        'status="404"} 1.0'
    ) in text
    assert "marketlake_http_request_duration_seconds_bucket" in text
    assert 'marketlake_store_query_duration_seconds_count{operation="load_series"}' in text


async def test_request_id_is_echoed_and_put_in_problems(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/bars/ZZZ", headers={"X-Request-ID": "abc123"})
    assert r.headers["x-request-id"] == "abc123"
    assert r.json()["request_id"] == "abc123"
    fresh = await client.get("/api/v1/health")
    assert len(fresh.headers["x-request-id"]) == 16


async def test_cors_allows_only_configured_origins(make_client: Callable[..., Any]) -> None:
    async with make_client(api_cors_origins=["http://dash.example"]) as client:
        ok = await client.get("/api/v1/health", headers={"Origin": "http://dash.example"})
        other = await client.get("/api/v1/health", headers={"Origin": "http://evil.example"})
    assert ok.headers["access-control-allow-origin"] == "http://dash.example"
    assert "access-control-allow-origin" not in other.headers


async def test_no_cors_headers_by_default(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/health", headers={"Origin": "http://dash.example"})
    assert "access-control-allow-origin" not in r.headers
