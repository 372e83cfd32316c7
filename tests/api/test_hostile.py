"""Hostile input to the API: path traversal, oversized or poisoned bodies, NUL bytes,
forged forwarding headers. Each answer is a 4xx with one clear line, never a 5xx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from marketlake.config import Settings
from marketlake.errors import InputError
from marketlake.providers.csv.reader import CsvProvider
from marketlake.store import Store
from tests.api.conftest import bearer
from tests.api.test_routes import _finished

PRICES = "ts,open,high,low,close,volume\n2024-03-04,1,2,0.5,1.5,100\n2024-03-05,1.5,2,1,1.8,90\n"


@pytest.fixture
def csv_tree(tmp_path: Path) -> Path:
    """``csv/`` (the CSV directory, with AAPL.csv) beside ``SECRET/PRICES.csv``."""
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "AAPL.csv").write_text(PRICES)
    (tmp_path / "SECRET").mkdir()
    (tmp_path / "SECRET" / "PRICES.csv").write_text(PRICES)
    return tmp_path


def _ingest(symbol: str) -> dict[str, Any]:
    return {
        "provider": "csv",
        "symbols": [symbol],
        "timeframe": "1d",
        "start": "2024-03-01",
        "end": "2024-03-10",
    }


@pytest.mark.parametrize(
    "symbol",
    [
        "../../../SECRET/PRICES",
        "../SECRET/PRICES",
        "/etc/passwd",
        "..%2FSECRET%2FPRICES",
        "%2e%2e/SECRET/PRICES",
        "..",
        ".hidden",
        "A//B",
        "BTC/",
    ],
)
async def test_path_syntax_in_an_ingest_symbol_is_422_and_nothing_is_read(
    make_client: Any, seeded: Store, keys: dict[str, str], csv_tree: Path, symbol: str
) -> None:
    async with make_client(csv_dir=csv_tree / "csv") as client:
        r = await client.post(
            "/api/v1/ingest/run", json=_ingest(symbol), headers=bearer(keys["write"])
        )
    assert r.status_code == 422, r.text
    assert r.json()["param"] == "symbol"
    assert seeded.list_jobs() == []
    assert not any("SECRET" in i.symbol for i in seeded.list_instruments())


async def test_a_symlink_out_of_the_csv_dir_is_refused_without_the_server_path(
    make_client: Any, seeded: Store, keys: dict[str, str], csv_tree: Path
) -> None:
    (csv_tree / "csv" / "LEAK.csv").symlink_to(csv_tree / "SECRET" / "PRICES.csv")
    async with make_client(csv_dir=csv_tree / "csv") as client:
        r = await client.post(
            "/api/v1/ingest/run", json=_ingest("leak"), headers=bearer(keys["write"])
        )
        assert r.status_code == 202
        job = await _finished(client, r.json()["job_id"])
    assert job["status"] == "failed"
    assert "outside the CSV directory" in job["error"]
    assert str(csv_tree) not in job["error"]
    assert seeded.count_bars("LEAK", "1d") == 0


async def test_a_missing_csv_file_does_not_reveal_the_server_path(
    make_client: Any, keys: dict[str, str], csv_tree: Path
) -> None:
    async with make_client(csv_dir=csv_tree / "csv") as client:
        r = await client.post(
            "/api/v1/ingest/run", json=_ingest("MSFT"), headers=bearer(keys["write"])
        )
        job = await _finished(client, r.json()["job_id"])
    assert job["status"] == "failed"
    assert "no file MSFT.csv in the CSV directory" in job["error"]
    assert str(csv_tree) not in job["error"]


async def test_a_csv_file_inside_the_dir_still_ingests(
    make_client: Any, seeded: Store, keys: dict[str, str], csv_tree: Path
) -> None:
    async with make_client(csv_dir=csv_tree / "csv") as client:
        r = await client.post(
            "/api/v1/ingest/run", json=_ingest("aapl"), headers=bearer(keys["write"])
        )
        job = await _finished(client, r.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert seeded.count_bars("AAPL", "1d") == 2


def test_the_csv_provider_confines_every_path(csv_tree: Path) -> None:
    settings = Settings(_env_file=None, csv_dir=csv_tree / "csv")  # type: ignore[call-arg]
    provider = CsvProvider(settings)
    assert provider.file_for("aapl") == (csv_tree / "csv" / "AAPL.csv").resolve()
    (csv_tree / "csv" / "SUB").symlink_to(csv_tree / "SECRET")
    with pytest.raises(InputError, match="outside the CSV directory"):
        provider.file_for("SUB/PRICES")
    for bad in ("../SECRET/PRICES", "/SECRET/PRICES", "A/../../SECRET/PRICES"):
        with pytest.raises(InputError, match="no path syntax"):
            provider.file_for(bad)


# -- body size, field lengths, NUL bytes --------------------------------------------------


async def test_a_body_over_the_limit_is_413_before_any_route_runs(
    make_client: Any, seeded: Store, keys: dict[str, str]
) -> None:
    big = {"symbol": "BIG", "name": "x" * 2_000_000}
    async with make_client(api_max_body_bytes=65_536) as client:
        r = await client.post("/api/v1/instruments", json=big, headers=bearer(keys["write"]))
        assert r.status_code == 413
        assert r.headers["content-type"] == "application/problem+json"
        assert "larger than 65,536 bytes (MARKETLAKE_API_MAX_BODY_BYTES)" in r.json()["detail"]

        async def chunks() -> Any:  # no Content-Length: counted as it arrives
            for _ in range(100):
                yield b"x" * 1024

        r = await client.post(
            "/api/v1/instruments",
            content=chunks(),
            headers=bearer(keys["write"]) | {"content-type": "application/json"},
        )
        assert r.status_code == 413
    assert "BIG" not in {i.symbol for i in seeded.list_instruments()}


@pytest.mark.parametrize(
    ("field", "size"), [("name", 201), ("exchange", 33), ("currency", 17), ("timezone", 65)]
)
async def test_an_overlong_instrument_field_is_422_naming_it(
    client: httpx.AsyncClient, seeded: Store, keys: dict[str, str], field: str, size: int
) -> None:
    body = {"symbol": "LONG", field: "A" * size}
    r = await client.post("/api/v1/instruments", json=body, headers=bearer(keys["write"]))
    assert r.status_code == 422
    assert r.json()["param"] == field
    r = await client.put(
        "/api/v1/instruments/LONG", json={field: "A" * size}, headers=bearer(keys["write"])
    )
    assert r.status_code == 422
    assert "LONG" not in {i.symbol for i in seeded.list_instruments()}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/jobs?kind=in%00gest", None),
        ("GET", "/api/v1/jobs/ab%00cd", None),
        ("GET", "/api/v1/backtests/ab%00cd", None),
        ("GET", "/api/v1/bars/AAPL?timeframe=1%00m", None),
        ("PUT", "/api/v1/instruments/NUL", '{"name": "a\\u0000b"}'),
        ("POST", "/api/v1/instruments", '{"symbol": "NUL", "name": "a\\u0000b"}'),
        (
            "POST",
            "/api/v1/alerts/rules",
            '{"id":"n","kind":"price_above","threshold":1,"message":"\\u0000"}',
        ),
    ],
)
async def test_a_nul_byte_anywhere_is_422_not_503(
    client: httpx.AsyncClient, keys: dict[str, str], method: str, path: str, body: str | None
) -> None:
    r = await client.request(
        method,
        path,
        content=body,
        headers=bearer(keys["admin"]) | {"content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert "NUL character" in r.json()["detail"]


# -- security headers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "csp"),
    [
        ("/", "script-src 'self';"),
        ("/docs", "script-src 'self' 'unsafe-inline'"),
        ("/api/v1/instruments", "default-src 'none'"),
        ("/api/v1/bars/NOPE", "default-src 'none'"),
        ("/no/such/route", "script-src 'self';"),
    ],
)
async def test_every_answer_carries_the_security_headers(
    client: httpx.AsyncClient, path: str, csp: str
) -> None:
    r = await client.get(path)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert csp in r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


# -- alert rules: numbers and templates are checked when the rule is made ---------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"id": "big", "kind": "price_above", "threshold": 1e400}', "threshold"),
        ('{"id": "nan", "kind": "price_above", "threshold": NaN}', "threshold"),
        ('{"id": "inf", "kind": "price_below", "threshold": -Infinity}', "threshold"),
        ('{"id": "t1", "kind": "price_above", "threshold": 1, "message": "{Symbol}"}', "message"),
        (
            '{"id": "t2", "kind": "price_above", "threshold": 1, "message": "{value:999999999}"}',
            "message",
        ),
    ],
)
async def test_a_rule_with_a_bad_number_or_template_is_422_and_not_stored(
    client: httpx.AsyncClient, seeded: Store, keys: dict[str, str], body: str, param: str
) -> None:
    r = await client.post(
        "/api/v1/alerts/rules",
        content=body,
        headers=bearer(keys["write"]) | {"content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["param"].endswith(param)
    assert seeded.select_rows("alert_rules") == []


# -- forwarded headers --------------------------------------------------------------------


def test_x_forwarded_for_is_believed_only_from_configured_proxies(tmp_path: Path) -> None:
    from tests.api.server import running

    def statuses(base: str) -> list[int]:
        with httpx.Client(base_url=base, timeout=30) as http:
            return [
                http.get(
                    "/api/v1/instruments", headers={"X-Forwarded-For": f"10.9.8.{i}"}
                ).status_code
                for i in range(8)
            ]

    limited = {
        "MARKETLAKE_API_RATE_LIMIT_PER_MINUTE": "3",
        "MARKETLAKE_STORE": "duckdb:///:memory:",
    }
    with running(["serve"], tmp_path / "a.log", env=limited) as (base, _):
        spoofed = statuses(base)
    # one client, whatever the header says: the bucket of 3 empties and stays empty
    assert spoofed == [200] * 3 + [429] * 5, spoofed
    trusted = limited | {"MARKETLAKE_API_TRUSTED_PROXIES": '["127.0.0.1"]'}
    with running(["serve"], tmp_path / "b.log", env=trusted) as (base, _):
        believed = statuses(base)
    # from a configured proxy each forwarded address is a client of its own
    assert believed == [200] * 8, believed


# -- query parameters: unknown and repeated ones are named ---------------------------------


@pytest.mark.parametrize(
    ("url", "says", "param"),
    [
        ("/api/v1/bars/AAPL?timefrme=1h", "unknown query parameter 'timefrme'", "timefrme"),
        ("/api/v1/bars/AAPL?limit=1&limit=2", "'limit' is given more than once", "limit"),
        ("/api/v1/jobs?kind=ingest&knd=x", "unknown query parameter 'knd'", "knd"),
        ("/api/v1/instruments?x=1", "this route takes:", "x"),
    ],
)
async def test_unknown_or_repeated_query_parameters_are_422_naming_them(
    client: httpx.AsyncClient, url: str, says: str, param: str
) -> None:
    r = await client.get(url)
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"]
    assert r.json()["param"] == param


async def test_known_query_parameters_still_work(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/bars/AAPL?timeframe=1m&limit=2")
    assert r.status_code == 200
    assert r.json()["count"] == 2


@pytest.mark.parametrize("body", ['{"symbol": "X",', "{'symbol': 'X'}", '{"10": }'])
async def test_malformed_json_is_400_as_documented(
    client: httpx.AsyncClient, keys: dict[str, str], body: str
) -> None:
    r = await client.post(
        "/api/v1/instruments",
        content=body,
        headers=bearer(keys["write"]) | {"content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["title"] == "Malformed JSON"
    assert r.json()["detail"].startswith("the request body is not valid JSON")
