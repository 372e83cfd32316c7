"""GET /bars/{symbol}: pages, keyset cursors, formats, errors."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from marketlake.schema import parse_time
from marketlake.store import Store
from marketlake.store.base import encode_cursor


async def test_json_page_holds_the_store_rows_and_a_cursor(
    client: httpx.AsyncClient, seeded: Store
) -> None:
    r = await client.get("/api/v1/bars/btcusdt", params={"timeframe": "1m", "limit": 3})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    expected = seeded.read_bars("BTCUSDT", "1m", limit=3)
    assert body["symbol"] == "BTCUSDT"
    assert body["timeframe"] == "1m"
    assert body["count"] == 3
    assert body["next_cursor"] == expected.next_cursor
    rows = expected.table.to_pylist()
    assert [parse_time(b["ts"]) for b in body["bars"]] == [row["ts"] for row in rows]
    assert [b["close"] for b in body["bars"]] == [row["close"] for row in rows]
    assert body["bars"][0]["ts"] == "2024-03-04T00:00:00+00:00"


async def test_following_next_cursor_walks_every_bar_once(
    client: httpx.AsyncClient, seeded: Store
) -> None:
    seen: list[str] = []
    cursor = None
    params = {"timeframe": "1m", "limit": 700, "start": "2024-03-04T12:00:00Z", "end": "2024-03-05"}
    while True:
        r = await client.get(
            "/api/v1/bars/BTCUSDT", params=params | ({"cursor": cursor} if cursor else {})
        )
        body = r.json()
        seen += [b["ts"] for b in body["bars"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 12 * 60
    assert seen[0] == "2024-03-04T12:00:00+00:00"
    assert seen[-1] == "2024-03-04T23:59:00+00:00"


async def test_json_default_page_is_1000_rows(client: httpx.AsyncClient) -> None:
    body = (await client.get("/api/v1/bars/BTCUSDT")).json()
    assert body["count"] == 1000
    assert body["next_cursor"] is not None


async def test_range_without_bars_is_an_empty_page(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/bars/AAPL", params={"start": "2030-01-01"})
    assert r.status_code == 200
    assert r.json() == {
        "symbol": "AAPL",
        "timeframe": "1m",
        "count": 0,
        "next_cursor": None,
        "bars": [],
    }


@pytest.mark.parametrize(
    "accept", ["text/csv", "application/vnd.apache.arrow.stream", "application/vnd.apache.parquet"]
)
async def test_accept_header_picks_the_bulk_format(
    client: httpx.AsyncClient, seeded: Store, accept: str
) -> None:
    r = await client.get("/api/v1/bars/AAPL", headers={"Accept": accept})
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == accept
    expected = seeded.read_bars("AAPL", "1m").table
    if accept == "text/csv":
        lines = r.text.splitlines()
        assert lines[0] == "symbol,timeframe,ts,open,high,low,close,volume,trades,vwap,source"
        assert len(lines) == expected.num_rows + 1
        first = expected.slice(0, 1).to_pylist()[0]
        assert lines[1].split(",")[2] == first["ts"].strftime("%Y-%m-%dT%H:%M:%SZ")
        assert float(lines[1].split(",")[6]) == first["close"]
    elif accept.endswith("stream"):
        assert pa.ipc.open_stream(r.content).read_all().equals(expected)
    else:
        assert pq.read_table(io.BytesIO(r.content)).equals(expected)


async def test_format_parameter_wins_over_accept(client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/api/v1/bars/AAPL", params={"format": "csv"}, headers={"Accept": "application/json"}
    )
    assert r.headers["content-type"].startswith("text/csv")
    assert 'filename="AAPL_1m.csv"' in r.headers["content-disposition"]


async def test_bulk_page_with_limit_carries_the_cursor_in_a_header(
    client: httpx.AsyncClient, seeded: Store
) -> None:
    r = await client.get("/api/v1/bars/AAPL", params={"format": "arrow", "limit": 10})
    table = pa.ipc.open_stream(r.content).read_all()
    expected = seeded.read_bars("AAPL", "1m", limit=10)
    assert table.equals(expected.table)
    assert r.headers["x-next-cursor"] == expected.next_cursor


async def test_bulk_stream_from_a_cursor_continues_after_it(
    client: httpx.AsyncClient, seeded: Store
) -> None:
    first = seeded.read_bars("AAPL", "1m", limit=100)
    r = await client.get(
        "/api/v1/bars/AAPL", params={"format": "arrow", "cursor": first.next_cursor}
    )
    rest = pa.ipc.open_stream(r.content).read_all()
    assert rest.equals(seeded.read_bars("AAPL", "1m", cursor=first.next_cursor).table)
    assert rest.num_rows == seeded.count_bars("AAPL") - 100


async def test_bulk_stream_without_cache_reads_the_store_in_batches(
    make_client: object, seeded: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from marketlake.api.routes import bars

    monkeypatch.setattr(bars, "BATCH_ROWS", 500)
    async with make_client(api_cache_max_rows=0) as client:  # type: ignore[operator]
        r = await client.get("/api/v1/bars/BTCUSDT", params={"format": "parquet"})
        cursor = seeded.read_bars("BTCUSDT", "1m", limit=1000).next_cursor
        r2 = await client.get("/api/v1/bars/BTCUSDT", params={"format": "csv", "cursor": cursor})
        stock = await client.get(
            "/api/v1/bars/AAPL",
            params={
                "format": "arrow",
                "start": "2024-03-04T15:00:00Z",
                "end": "2024-03-05T15:00:00Z",
            },
        )
    expected = seeded.read_bars(
        "AAPL", "1m", parse_time("2024-03-04T15:00:00Z"), parse_time("2024-03-05T15:00:00Z")
    ).table
    assert pa.ipc.open_stream(stock.content).read_all().equals(expected)
    parquet = pq.ParquetFile(io.BytesIO(r.content))
    assert parquet.metadata.num_row_groups == 6  # 2880 rows in batches of 500
    assert parquet.read().equals(seeded.read_bars("BTCUSDT", "1m").table)
    assert len(r2.text.splitlines()) == 2880 - 1000 + 1


async def test_cache_sees_a_write_at_once(client: httpx.AsyncClient, seeded: Store) -> None:
    from tests.conftest import bars_for

    before = (await client.get("/api/v1/bars/AAPL/latest")).json()
    seeded.write_bars(bars_for("AAPL", start="2024-03-06", end="2024-03-07"))
    after = (await client.get("/api/v1/bars/AAPL/latest")).json()
    assert before["ts"] == "2024-03-05T20:59:00Z"
    assert after["ts"] == "2024-03-06T20:59:00Z"


async def test_latest_bar_is_the_newest_stored(client: httpx.AsyncClient, seeded: Store) -> None:
    r = await client.get("/api/v1/bars/BTCUSDT/latest", params={"timeframe": "1m"})
    newest = seeded.latest_bar("BTCUSDT", "1m")
    assert newest is not None
    assert r.status_code == 200
    body = r.json()
    assert parse_time(body["ts"]) == newest["ts"]
    assert body["close"] == newest["close"]
    assert body["symbol"] == "BTCUSDT"
    assert body["timeframe"] == "1m"


async def test_latest_bar_of_an_empty_timeframe_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/bars/BTCUSDT/latest", params={"timeframe": "1h"})
    assert r.status_code == 404
    assert "no 1h bars stored for BTCUSDT" in r.json()["detail"]


@pytest.mark.parametrize(
    ("params", "param", "words"),
    [
        ({"timeframe": "7x"}, "timeframe", "unknown timeframe '7x'"),
        ({"start": "2024-03-05", "end": "2024-03-04"}, "start", "must be before end"),
        ({"start": "yesterday"}, "start", "is not an ISO date"),
        ({"end": "2024-13-01"}, "end", "is not an ISO date"),
        ({"limit": "0"}, "limit", "greater than or equal to 1"),
        ({"limit": "1000001"}, "limit", "less than or equal to 1000000"),
        ({"limit": "60000"}, "limit", "above 50000 for JSON"),
        ({"limit": "ten"}, "limit", "valid integer"),
        ({"cursor": "garbage!"}, "cursor", "is not valid"),
        ({"format": "xml"}, "format", "'json', 'csv', 'arrow' or 'parquet'"),
    ],
)
async def test_bad_parameters_are_422_naming_the_parameter(
    client: httpx.AsyncClient, params: dict[str, str], param: str, words: str
) -> None:
    r = await client.get("/api/v1/bars/AAPL", params=params)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["param"] == param
    assert words in problem["detail"]
    assert problem["type"] == "urn:marketlake:problem:invalid-input"


async def test_unknown_symbol_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/bars/ZZZZ")
    assert r.status_code == 404
    assert r.json()["detail"] == (
        "unknown symbol ZZZZ; list known ones with GET /api/v1/instruments"
    )


async def test_malformed_symbol_is_422(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/bars/a b")
    assert r.status_code == 422
    assert r.json()["param"] == "symbol"


async def test_cursor_of_another_symbol_is_422_not_an_empty_page(
    client: httpx.AsyncClient,
) -> None:
    cursor = encode_cursor("ZZZ", parse_time("2024-01-01"))
    r = await client.get("/api/v1/bars/AAPL", params={"cursor": cursor})
    assert r.status_code == 422
    assert r.json()["param"] == "cursor"


async def test_a_rendered_page_is_not_served_after_a_write(
    client: httpx.AsyncClient, seeded: Store
) -> None:
    from tests.conftest import bars_for

    params = {"start": "2024-03-06", "limit": 5}
    before = (await client.get("/api/v1/bars/AAPL", params=params)).json()
    again = (await client.get("/api/v1/bars/AAPL", params=params)).json()
    seeded.write_bars(bars_for("AAPL", start="2024-03-06", end="2024-03-07"))
    after = (await client.get("/api/v1/bars/AAPL", params=params)).json()
    assert before == again
    assert before["count"] == 0
    assert after["count"] == 5
    assert after["bars"][0]["ts"] == "2024-03-06T14:30:00+00:00"


@pytest.mark.parametrize("fmt", ["json", "csv-page", "arrow-stream"])
async def test_adjusted_bars_are_the_stored_ones_adjusted(
    make_client: Callable[..., Any], seeded: Store, fmt: str
) -> None:
    """adjusted=true gives what read_adjusted gives; without it, the bars as traded."""
    from marketlake.timeseries.adjust import ACTION_SCHEMA, read_adjusted

    split = datetime(2024, 3, 5, tzinfo=UTC)
    seeded.write_actions(
        pa.table(
            {
                "symbol": ["AAPL"],
                "ts": [split],
                "kind": ["split"],
                "value": [4.0],
                "source": ["test"],
            },
            schema=ACTION_SCHEMA,
        ),
    )
    expected = read_adjusted(seeded, "AAPL", "1m")
    traded = seeded.read_bars("AAPL", "1m").table
    assert not expected.column("close").equals(traded.column("close"))
    async with make_client() as client:
        if fmt == "json":
            r = await client.get("/api/v1/bars/AAPL", params={"adjusted": "true", "limit": 5})
            closes = [b["close"] for b in r.json()["bars"]]
            assert closes == expected.column("close").to_pylist()[:5]
            assert r.json()["next_cursor"] is not None
        elif fmt == "csv-page":
            r = await client.get(
                "/api/v1/bars/AAPL", params={"adjusted": "true", "format": "csv", "limit": 3}
            )
            volumes = [float(line.split(",")[7]) for line in r.text.splitlines()[1:]]
            assert volumes == expected.column("volume").to_pylist()[:3]
            assert "x-next-cursor" in r.headers
        else:
            r = await client.get(
                "/api/v1/bars/AAPL", params={"adjusted": "true", "format": "arrow"}
            )
            assert pa.ipc.open_stream(r.content).read_all().equals(expected)
            plain = await client.get("/api/v1/bars/AAPL", params={"format": "arrow"})
            assert pa.ipc.open_stream(plain.content).read_all().equals(traded)
