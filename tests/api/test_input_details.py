"""Details of bad input to the API (issue 18): what a 4xx says, and symbols with a slash."""

from __future__ import annotations

import httpx
import pytest

from marketlake.api.errors import api_words
from marketlake.schema import Instrument
from marketlake.store import Store
from tests.api.conftest import bearer
from tests.conftest import bars_for


async def test_a_bad_start_is_titled_invalid_input_not_table_schema(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/api/v1/bars/AAPL", params={"timeframe": "1m", "start": "notadate"})
    assert r.status_code == 422
    problem = r.json()
    assert problem["title"] == "Invalid input"
    assert problem["param"] == "start"
    assert "%2B" not in problem["detail"]


async def test_an_unencoded_plus_of_an_offset_gets_the_hint_to_encode_it(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/api/v1/bars/AAPL?timeframe=1m&start=2024-03-04T10:00:00+01:00")
    assert r.status_code == 422
    assert "encode the '+' of an offset as %2B" in r.json()["detail"]
    r = await client.get("/api/v1/bars/AAPL?timeframe=1m&start=2024-03-04T10:00:00%2B01:00")
    assert r.status_code == 200, r.text


async def test_a_cursor_of_another_symbol_is_422_not_a_page(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/bars/AAPL", params={"timeframe": "1m", "limit": 5})
    cursor = r.json()["next_cursor"]
    assert cursor
    r = await client.get(
        "/api/v1/bars/BTCUSDT", params={"timeframe": "1m", "limit": 5, "cursor": cursor}
    )
    assert r.status_code == 422, r.text
    assert r.json()["param"] == "cursor"
    assert "belongs to the bars of AAPL" in r.json()["detail"]
    r = await client.get("/api/v1/bars/AAPL", params={"timeframe": "1m", "cursor": cursor})
    assert r.status_code == 200


@pytest.mark.parametrize("path", ["bars/BTC%2FUSD?timeframe=1m", "prices/BTC%2FUSD"])
async def test_a_symbol_with_a_slash_is_reachable(
    client: httpx.AsyncClient, seeded: Store, path: str
) -> None:
    seeded.add_instrument(Instrument(symbol="BTC/USD", asset_class="crypto", timezone="UTC"))
    seeded.write_bars(bars_for(["BTC/USD"]))
    r = await client.get(f"/api/v1/{path}")
    assert r.status_code == 200, r.text
    assert r.json()["symbol"] == "BTC/USD"


async def test_latest_routes_still_win_over_a_symbol_path(
    client: httpx.AsyncClient, seeded: Store
) -> None:
    seeded.add_instrument(Instrument(symbol="BTC/USD", asset_class="crypto", timezone="UTC"))
    seeded.write_bars(bars_for(["BTC/USD"]))
    for path in ("bars/AAPL/latest?timeframe=1m", "bars/BTC%2FUSD/latest?timeframe=1m"):
        r = await client.get(f"/api/v1/{path}")
        assert r.status_code == 200, r.text
        assert "ts" in r.json()
    r = await client.get("/api/v1/prices/BTC%2FUSD/latest")
    assert r.status_code == 200, r.text
    assert r.json()["symbol"] == "BTC/USD"


async def test_an_instrument_with_a_slash_can_be_read_put_and_deleted(
    client: httpx.AsyncClient, seeded: Store, keys: dict[str, str]
) -> None:
    write = bearer(keys["write"])
    r = await client.put("/api/v1/instruments/ETH%2FEUR", json={"currency": "EUR"}, headers=write)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == "/api/v1/instruments/ETH%2FEUR"
    r = await client.get("/api/v1/instruments/ETH%2FEUR")
    assert r.status_code == 200
    assert r.json()["currency"] == "EUR"
    r = await client.delete("/api/v1/instruments/ETH%2FEUR", headers=write)
    assert r.status_code == 204
    assert "ETH/EUR" not in {i.symbol for i in seeded.list_instruments()}


async def test_put_accepts_the_body_get_returns(
    client: httpx.AsyncClient, seeded: Store, keys: dict[str, str]
) -> None:
    body = (await client.get("/api/v1/instruments/AAPL")).json()
    assert body["symbol"] == "AAPL"
    assert "auto_registered" in body
    body["name"] = "Apple Inc."
    r = await client.put("/api/v1/instruments/AAPL", json=body, headers=bearer(keys["write"]))
    assert r.status_code == 200, r.text
    assert seeded.instrument("AAPL").name == "Apple Inc."


async def test_put_with_another_symbol_in_the_body_is_422_and_changes_nothing(
    client: httpx.AsyncClient, seeded: Store, keys: dict[str, str]
) -> None:
    r = await client.put(
        "/api/v1/instruments/AAPL",
        json={"symbol": "MSFT", "name": "Renamed"},
        headers=bearer(keys["write"]),
    )
    assert r.status_code == 422
    assert r.json()["param"] == "symbol"
    assert seeded.instrument("AAPL").name == "Apple"
    assert "MSFT" not in {i.symbol for i in seeded.list_instruments()}


async def test_a_409_speaks_the_api_s_words(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    r = await client.post(
        "/api/v1/instruments", json={"symbol": "AAPL"}, headers=bearer(keys["write"])
    )
    assert r.status_code == 409
    detail = r.json()["detail"]
    assert "PUT /api/v1/instruments/AAPL" in detail
    assert "`" not in detail
    assert "--" not in detail


def test_api_words_turn_flags_into_parameters() -> None:
    said = api_words("--start 2024 must be before --end 2023")
    assert said == "start 2024 must be before end 2023"
    assert api_words("pass --replace-sources") == "pass replace_sources"
    assert api_words("a range 2024-03-04--05 stays") == "a range 2024-03-04--05 stays"


@pytest.mark.parametrize("route", ["trades", "actions"])
async def test_the_dataset_routes_reach_a_symbol_with_a_slash(
    client: httpx.AsyncClient, seeded: Store, route: str
) -> None:
    import pyarrow as pa

    seeded.add_instrument(Instrument(symbol="BTC/USD", asset_class="crypto", timezone="UTC"))
    r = await client.get(f"/api/v1/{route}/BTC%2FUSD")
    assert r.status_code == 200, r.text
    assert pa.ipc.open_stream(r.content).read_all().num_rows == 0
    r = await client.get(f"/api/v1/{route}/NOPE%2FUSD")
    assert r.status_code == 404, r.text
