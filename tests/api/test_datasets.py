"""The routes of the Python client's calls: several symbols in one Arrow stream, uploads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pyarrow as pa

from marketlake.schema import BAR_SCHEMA
from tests.api.conftest import bearer

ARROW = "application/vnd.apache.arrow.stream"


async def test_several_symbols_are_one_arrow_stream(client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/api/v1/bars", params={"symbols": "btcusdt,AAPL", "timeframe": "1m", "end": "2024-03-05"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == ARROW
    table = pa.ipc.open_stream(r.content).read_all()
    assert table.schema == BAR_SCHEMA
    symbols = table.column("symbol").to_pylist()
    assert symbols == sorted(symbols)  # by symbol, then time
    assert set(symbols) == {"AAPL", "BTCUSDT"}
    one = await client.get(
        "/api/v1/bars/AAPL", params={"timeframe": "1m", "end": "2024-03-05", "format": "arrow"}
    )
    single = pa.ipc.open_stream(one.content).read_all()
    assert table.filter(pa.compute.equal(table["symbol"], "AAPL")).equals(single)


async def test_several_symbols_check_each(client: httpx.AsyncClient) -> None:
    unknown = await client.get("/api/v1/bars", params={"symbols": "AAPL,NOPE"})
    bad = await client.get("/api/v1/bars", params={"symbols": "AAPL", "timeframe": "7q"})
    empty = await client.get("/api/v1/bars", params={"symbols": " , "})
    assert unknown.status_code == 404
    assert "unknown symbol NOPE" in unknown.json()["detail"]
    assert bad.status_code == 422
    assert "7q" in bad.json()["detail"]
    assert empty.status_code == 422


async def test_csv_upload_within_the_body_limit(
    make_client: Callable[..., Any], keys: dict[str, str]
) -> None:
    row = b"2024-01-02,10,11,9,10.5,100\n"
    body = b"Date,Open,High,Low,Close,Volume\n" + row
    async with make_client(api_max_body_bytes=1024) as client:
        ok = await client.post(
            "/api/v1/import/csv?symbol=UPL&timeframe=1d", content=body,
            headers=bearer(keys["write"]),
        )  # fmt: skip
        big = await client.post(
            "/api/v1/import/csv?symbol=UPL&timeframe=1d", content=body + row * 60,
            headers=bearer(keys["write"]),
        )  # fmt: skip
        empty = await client.post(
            "/api/v1/import/csv?symbol=UPL", content=b"", headers=bearer(keys["write"])
        )
        bars = await client.get("/api/v1/bars/UPL", params={"timeframe": "1d"})
    assert ok.status_code == 201, ok.text
    assert (ok.json()["kind"], ok.json()["summary"]["inserted"]) == ("import", 1)
    assert big.status_code == 413
    assert "MARKETLAKE_API_MAX_BODY_BYTES" in big.json()["detail"]
    assert empty.status_code == 422
    assert bars.json()["count"] == 1
