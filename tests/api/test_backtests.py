"""``POST /api/v1/backtests`` and ``GET /api/v1/backtests/{id}``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from marketlake.backtest import get_backtest
from marketlake.store import Store
from tests.api.conftest import bearer

BODY = {
    "strategy": "sma_cross",
    "params": {"fast": 5, "slow": 20},
    "symbols": ["AAPL"],
    "timeframe": "5m",
    "start": "2024-03-04",
    "end": "2024-03-06",
    "commission_bps": 5,
}


async def test_post_runs_stores_and_get_reads_it_back(
    client: httpx.AsyncClient, keys: dict[str, str], seeded: Store
) -> None:
    r = await client.post("/api/v1/backtests", json=BODY, headers=bearer(keys["write"]))
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    assert r.headers["location"] == f"/api/v1/backtests/{created['id']}"
    assert created["request"]["params"] == {"fast": 5, "slow": 20}
    assert created["request"]["config"]["commission_bps"] == 5
    assert created["stats"]["bars"] == 2 * 78  # two sessions of 5-minute bars, rolled up
    assert len(created["trades"]) == created["stats"]["trades"] + created["stats"]["open_trades"]
    assert created["stats"] == get_backtest(seeded, created["id"])["stats"]
    again = await client.get(f"/api/v1/backtests/{created['id']}")
    assert again.status_code == 200
    assert again.json() == created
    slim = await client.get(f"/api/v1/backtests/{created['id']}", params={"trades": "false"})
    assert slim.json()["trades"] is None


async def test_synthetic_data_needs_no_stored_bars(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    body = {
        "strategy": "buy_and_hold",
        "symbols": ["ETHUSDT"],
        "timeframe": "1h",
        "start": "2024-01-01",
        "end": "2024-01-03",
        "synthetic": True,
        "fractional": True,
    }
    r = await client.post("/api/v1/backtests", json=body, headers=bearer(keys["write"]))
    assert r.status_code == 201, r.text
    assert r.json()["stats"]["bars"] == 48


async def test_an_unknown_parameter_is_422_listing_the_valid_ones_and_stores_nothing(
    client: httpx.AsyncClient, keys: dict[str, str], seeded: Store
) -> None:
    body = {**BODY, "params": {"fats": 5}}
    r = await client.post("/api/v1/backtests", json=body, headers=bearer(keys["write"]))
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "valid parameters: fast (int, default 10), slow (int, default 30)" in r.json()["detail"]
    assert seeded.select_rows("backtests") == []


async def test_fast_not_below_slow_and_too_few_bars_are_422(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    for params, message in (
        ({"fast": 30, "slow": 20}, "must be smaller than slow"),
        ({"fast": 5, "slow": 500}, "needs at least 501 bars"),
    ):
        r = await client.post(
            "/api/v1/backtests", json={**BODY, "params": params}, headers=bearer(keys["write"])
        )
        assert r.status_code == 422
        assert message in r.json()["detail"]


async def test_a_symbol_without_bars_is_404(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    r = await client.post(
        "/api/v1/backtests", json={**BODY, "symbols": ["MSFT"]}, headers=bearer(keys["write"])
    )
    assert r.status_code == 404
    assert "Ingest some first" in r.json()["detail"]


async def test_running_a_backtest_needs_a_write_key(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    assert (await client.post("/api/v1/backtests", json=BODY)).status_code == 401
    r = await client.post("/api/v1/backtests", json=BODY, headers=bearer(keys["read"]))
    assert r.status_code == 403


async def test_an_unknown_backtest_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/backtests/nope")
    assert r.status_code == 404
    assert "unknown backtest 'nope'" in r.json()["detail"]


PORTFOLIO = {
    "kind": "portfolio",
    "strategy": "equal_weight",
    "symbols": ["BTCUSDT", "ETHUSDT", "SOLUSDT"],
    "timeframe": "1d",
    "start": "2024-01-01",
    "end": "2024-07-01",
    "synthetic": True,
    "fractional": True,
    "rebalance": "weekly",
}


async def test_post_runs_a_portfolio_on_one_cash_account(
    client: httpx.AsyncClient, keys: dict[str, str], seeded: Store
) -> None:
    r = await client.post("/api/v1/backtests", json=PORTFOLIO, headers=bearer(keys["write"]))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["request"]["kind"] == "portfolio"
    assert created["stats"]["symbols"] == 3
    assert created["stats"]["turnover_pct"] is not None
    assert sum(created["stats"]["weights"].values()) == pytest.approx(1.0, abs=0.02)
    fills = created["trades"]
    assert {f["symbol"] for f in fills} == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    # the first rebalance spends the cash in three equal parts
    first = [f for f in fills if f["ts"] == fills[0]["ts"]]
    assert [round(f["value"]) for f in first] == [3333, 3333, 3333]
    assert created == (await client.get(f"/api/v1/backtests/{created['id']}")).json()


async def test_post_runs_a_walk_forward(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    body = {
        "kind": "walk_forward",
        "strategy": "sma_cross",
        "grid": {"fast": [5, 10], "slow": [20, 40]},
        "windows": 3,
        "symbols": ["BTCUSDT"],
        "timeframe": "1h",
        "start": "2024-01-01",
        "end": "2024-03-01",
        "synthetic": True,
        "fractional": True,
    }
    r = await client.post("/api/v1/backtests", json=body, headers=bearer(keys["write"]))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["request"]["kind"] == "walk_forward"
    assert created["stats"]["windows"] == 3
    assert len(created["trades"]) == 3  # one row per window
    assert {s["parameter"] for s in created["stats"]["stability"]} == {"fast", "slow"}


async def test_portfolio_and_walk_forward_input_mistakes_are_422(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    auth = bearer(keys["write"])
    cases = [
        ({**PORTFOLIO, "stop_loss_pct": 5}, "do not apply to a portfolio"),
        ({**PORTFOLIO, "rebalance": "hourly"}, "rebalance"),
        ({**PORTFOLIO, "strategy": "nope"}, "unknown strategy"),
        ({**PORTFOLIO, "kind": "walk_forward", "strategy": "sma_cross"}, "needs a grid"),
        (
            {**PORTFOLIO, "kind": "walk_forward", "strategy": "sma_cross",
             "grid": {"fast": list(range(1, 40)), "slow": list(range(50, 90))}},
            "at most 1000",
        ),
        (
            {**PORTFOLIO, "kind": "walk_forward", "strategy": "sma_cross",
             "grid": {"fats": [5]}},
            "unknown parameter 'fats'",
        ),
    ]  # fmt: skip
    for body, message in cases:
        r = await client.post("/api/v1/backtests", json=body, headers=auth)
        assert r.status_code == 422, (body, r.text)
        assert message in r.text, r.text
    r = await client.post("/api/v1/backtests", json=PORTFOLIO, headers=bearer(keys["read"]))
    assert r.status_code == 403
