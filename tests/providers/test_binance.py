"""Binance klines: recorded /api/v3/klines answers become exact canonical bars."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketlake.errors import (
    CircuitOpenError,
    InputError,
    ProviderError,
    SymbolNotFoundError,
)
from marketlake.providers.binance.klines import (
    BAR_VALUES,
    page_extent,
    parse_kline_event,
    parse_klines,
    read_plain_klines,
)
from marketlake.providers.binance.rest import BinanceProvider
from marketlake.tools.mirror import Mirror
from tests.providers.vendor import Vendor, collect, make

START = datetime(2024, 3, 4, tzinfo=UTC)
END = datetime(2024, 3, 4, 0, 7, tzinfo=UTC)
KLINES = "/api/v3/klines"
T0 = 1709510400000
DATA = Path(__file__).parent.parent / "data" / "binance"


@pytest.fixture(autouse=True)
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorded pages were fetched with limit=3 so they stay readable."""
    monkeypatch.setattr(BinanceProvider, "page_limit", 3)


def vendor() -> Vendor:
    return Vendor("binance")


def paged() -> Vendor:
    return (
        vendor()
        .on(KLINES, "klines_BTCUSDT_1m_page1.json")
        .on(KLINES, "klines_BTCUSDT_1m_page2.json")
        .on(KLINES, "klines_BTCUSDT_1m_page3.json")
    )


async def fetch(
    v: Vendor, symbol: str = "BTCUSDT", start: datetime = START, end: datetime = END
) -> tuple[pa.Table, BinanceProvider, list[float]]:
    provider, sleeps = make(BinanceProvider, v)
    tables = await collect(provider, symbol, "1m", start, end)
    table = pa.concat_tables(tables) if tables else pa.table({})
    return table, provider, sleeps.waits


async def test_pages_follow_the_last_open_time_and_stop_on_a_partial_page() -> None:
    v = paged()
    table, _, _ = await fetch(v)
    assert table.num_rows == 7
    assert [p["startTime"] for p in v.params] == [str(T0), str(T0 + 120_001), str(T0 + 300_001)]
    assert {p["endTime"] for p in v.params} == {str(T0 + 7 * 60_000 - 1)}
    assert {(p["symbol"], p["interval"], p["limit"]) for p in v.params} == {("BTCUSDT", "1m", "3")}


async def test_klines_become_exact_canonical_rows() -> None:
    table, _, _ = await fetch(paged())
    first, last = table.slice(0, 1).to_pylist()[0], table.slice(6, 1).to_pylist()[0]
    assert first == {
        "symbol": "BTCUSDT",
        "timeframe": "1m",
        "ts": START,
        "open": 62387.9,
        "high": 62421.09,
        "low": 62350.0,
        "close": 62400.01,
        "volume": 41.53245,
        "trades": 1872,
        "vwap": pytest.approx(2590814.6133952 / 41.53245, rel=1e-15),
        "source": "binance",
    }
    assert last["ts"] == datetime(2024, 3, 4, 0, 6, tzinfo=UTC)
    assert (last["volume"], last["trades"], last["vwap"]) == (0.0, 0, None)
    assert table.column("close").to_pylist() == [
        62400.01,
        62431.99,
        62301.37,
        62350.86,
        62380.02,
        62311.11,
        62333.33,
    ]


async def test_an_empty_page_ends_the_fetch_with_no_bars() -> None:
    table, _, _ = await fetch(vendor().on(KLINES, "klines_empty.json"))
    assert table.num_rows == 0


async def test_bars_outside_the_half_open_range_are_cut() -> None:
    v = vendor().on(KLINES, "klines_BTCUSDT_1m_page1.json")
    table, _, _ = await fetch(
        v, start=datetime(2024, 3, 4, 0, 1, tzinfo=UTC), end=datetime(2024, 3, 4, 0, 2, tzinfo=UTC)
    )
    assert table.column("ts").to_pylist() == [datetime(2024, 3, 4, 0, 1, tzinfo=UTC)]


async def test_unknown_extra_fields_are_ignored() -> None:
    table, _, _ = await fetch(
        vendor().on(KLINES, "klines_extra_fields.json").on(KLINES, "klines_empty.json")
    )
    assert table.column("close").to_pylist() == [62400.01, 62431.99, 62301.37]


async def test_a_kline_missing_fields_is_a_clear_error() -> None:
    with pytest.raises(ProviderError, match=r"kline 1 of BTCUSDT has 8 fields; expected 12"):
        await fetch(vendor().on(KLINES, "klines_missing_field.json"))


async def test_unknown_symbol_says_no_such_symbol_at_binance() -> None:
    v = vendor().on(KLINES, "error_invalid_symbol.json", status=400)
    with pytest.raises(SymbolNotFoundError, match="no such symbol at binance: NOPEUSDT"):
        await fetch(v, "NOPEUSDT")
    assert len(v.requests) == 1


async def test_an_invalid_interval_is_an_input_error() -> None:
    with pytest.raises(InputError, match="Invalid interval"):
        await fetch(vendor().on(KLINES, "error_invalid_interval.json", status=400))


async def test_429_waits_retry_after_then_succeeds() -> None:
    v = (
        vendor()
        .on(KLINES, "error_too_many_requests.json", status=429, headers={"Retry-After": "7"})
        .on(KLINES, "klines_BTCUSDT_1m_page3.json")
    )
    table, provider, waits = await fetch(v)
    assert table.num_rows == 1
    assert waits == [7.0]
    assert provider.breaker.failures == 0


async def test_418_ban_beyond_the_longest_wait_fails_at_once_saying_when() -> None:
    v = vendor().on(KLINES, "error_ip_banned.json", status=418, headers={"Retry-After": "3600"})
    with pytest.raises(ProviderError, match="asks to wait 3600 s"):
        await fetch(v)
    assert len(v.requests) == 1


async def test_used_weight_near_the_limit_waits_for_the_next_minute() -> None:
    v = (
        vendor()
        .on(KLINES, "klines_BTCUSDT_1m_page1.json", headers={"X-MBX-USED-WEIGHT-1m": "5990"})
        .on(KLINES, "klines_empty.json", headers={"X-MBX-USED-WEIGHT-1m": "2"})
    )
    _, provider, waits = await fetch(v)
    assert len(waits) == 1
    assert 0.5 <= waits[0] <= 60.5
    assert provider.used_weight_1m == 2


async def test_a_5xx_storm_opens_the_breaker_and_later_calls_fail_fast() -> None:
    v = vendor().on(KLINES, "error_cloudfront_502.html", status=502, times=10)
    provider, waits = make(BinanceProvider, v)
    with pytest.raises(CircuitOpenError, match="binance failed 5 times in a row"):
        await collect(provider, "BTCUSDT", "1m", START, END)
    assert len(v.requests) == 5
    assert len(waits.waits) == 4
    with pytest.raises(CircuitOpenError):
        await collect(provider, "ETHUSDT", "1m", START, END)
    assert len(v.requests) == 5


async def test_backoff_grows_exponentially_with_jitter() -> None:
    v = (
        vendor()
        .on(KLINES, status=503, body=b"", times=3)
        .on(KLINES, "klines_BTCUSDT_1m_page3.json")
    )
    _, _, waits = await fetch(v)
    assert len(waits) == 3
    for attempt, wait in enumerate(waits):
        assert 0.25 * 2**attempt <= wait <= 0.5 * 2**attempt


async def test_the_breaker_lets_a_trial_call_through_after_its_pause() -> None:
    v = (
        vendor()
        .on(KLINES, status=500, body=b"", times=5)
        .on(KLINES, "klines_BTCUSDT_1m_page3.json")
    )
    provider, _ = make(BinanceProvider, v)
    now = [0.0]
    provider.breaker.clock = lambda: now[0]
    with pytest.raises(CircuitOpenError):
        await collect(provider, "BTCUSDT", "1m", START, END)
    now[0] = 31.0
    tables = await collect(provider, "BTCUSDT", "1m", START, END)
    assert sum(t.num_rows for t in tables) == 1
    assert not provider.breaker.is_open


async def test_timeouts_and_dropped_connections_are_retried() -> None:
    v = (
        vendor()
        .on(KLINES, error=httpx.ReadTimeout)
        .on(KLINES, error=httpx.RemoteProtocolError)
        .on(KLINES, "klines_BTCUSDT_1m_page3.json")
    )
    table, _, waits = await fetch(v)
    assert table.num_rows == 1
    assert len(waits) == 2


async def test_an_html_page_instead_of_json_says_so() -> None:
    v = vendor().on(KLINES, "error_cloudfront_502.html", status=200)
    with pytest.raises(ProviderError, match="HTML page instead of JSON"):
        await fetch(v)


async def test_a_truncated_body_says_it_was_cut_off() -> None:
    with pytest.raises(ProviderError, match=r"truncated JSON body \(\d+ bytes\)"):
        await fetch(vendor().on(KLINES, "klines_truncated.json"))


async def test_malformed_json_quotes_the_parser() -> None:
    with pytest.raises(ProviderError, match="malformed JSON"):
        await fetch(vendor().on(KLINES, "klines_malformed.json"))


async def test_describe_knows_the_quote_currency_without_a_request() -> None:
    v = vendor()
    provider, _ = make(BinanceProvider, v)
    info = await provider.describe("ethbtc")
    assert (info.symbol, info.asset_class, info.currency, info.exchange, info.timezone) == (
        "ETHBTC",
        "crypto",
        "BTC",
        "BINANCE",
        "UTC",
    )
    assert v.requests == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"code":0,"msg":"ok"}', "should be a JSON array, got dict"),
        (
            b'[[1709510400000,"abc","1","1","1","1",1709510459999,"1",1,"1","1","0"]]',
            "field 'open' of BTCUSDT is not a number",
        ),
        (
            b'[[1709510400000,null,"1","1","1","1",1709510459999,"1",1,"1","1","0"]]',
            "field 'open' of BTCUSDT has 1 empty values",
        ),
        (b"[7]", "kline 0 of BTCUSDT has 0 fields"),
    ],
)
async def test_answers_that_are_not_klines_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(ProviderError, match=message):
        await fetch(vendor().on(KLINES, body=body))


async def test_numbers_instead_of_decimal_strings_still_parse() -> None:
    body = (
        b"[[1709510400000,62387.9,62421.09,62350.0,62400.01,41.5,1709510459999,2590814.6,1,0,0,0]]"
    )
    table, _, _ = await fetch(vendor().on(KLINES, body=body))
    assert table.column("close").to_pylist() == [62400.01]


async def test_an_empty_range_makes_no_request() -> None:
    v = vendor()
    table, _, _ = await fetch(v, start=START, end=START)
    assert (table.num_rows, v.requests) == (0, [])


def mirrored_page() -> bytes:
    """A full page of 1000 klines as the mirror renders them in Binance's format."""
    query = {
        "symbol": "BTCUSDT",
        "interval": "1m",
        "startTime": str(T0),
        "endTime": str(T0 + 86_400_000),
        "limit": "1000",
    }
    return Mirror().answer(KLINES, query).body


@pytest.mark.parametrize(
    "body",
    [
        *((DATA / f"klines_BTCUSDT_1m_page{n}.json").read_bytes().strip() for n in (1, 2, 3)),
        mirrored_page(),
    ],
)
def test_plain_pages_read_as_csv_equal_the_json_parse(body: bytes) -> None:
    """The fast reader of Binance's plain layout gives exactly the JSON parser's rows."""
    fast = read_plain_klines([body], "BTCUSDT", "1m")
    assert fast is not None
    assert fast.equals(parse_klines(orjson.loads(body), "BTCUSDT", "1m"))
    assert page_extent(body) == (fast.num_rows, orjson.loads(body)[-1][0])


def test_several_pages_read_at_once_equal_each_page_parsed_alone() -> None:
    bodies = [(DATA / f"klines_BTCUSDT_1m_page{n}.json").read_bytes().strip() for n in (1, 2, 3)]
    bodies.append(mirrored_page())
    together = read_plain_klines(bodies, "BTCUSDT", "1m")
    assert together is not None
    assert together.equals(
        pa.concat_tables([parse_klines(orjson.loads(body), "BTCUSDT", "1m") for body in bodies])
    )
    spaced = b'[[1709510400000, "1","1","1","1","1",1709510459999,"1",1,"1","1","0"]]'
    one_odd = [*bodies[:2], spaced]
    assert read_plain_klines(one_odd, "BTCUSDT", "1m") is None


@pytest.mark.parametrize("body", [b"[]", b'{"code":0}', b'[["x","1"],["y","2"]]', b"[[]]"])
def test_a_page_that_is_not_plain_klines_has_nopage_extent(body: bytes) -> None:
    assert page_extent(body) is None


async def until_it_fails(provider: BinanceProvider, got: list[pa.Table]) -> None:
    """Keep what the fetch yields in ``got`` until it raises (StopAsyncIteration if not)."""
    tables = provider.fetch_bars("BTCUSDT", "1m", START, END)
    while True:
        got.append(await anext(tables))


async def test_a_wrong_page_after_good_ones_yields_the_good_ones_then_says_what_is_wrong() -> None:
    bad = (
        (DATA / "klines_BTCUSDT_1m_page2.json")
        .read_bytes()
        .replace(b'"62301.36000000"', b'"6230x.36"', 1)
    )
    provider, _ = make(
        BinanceProvider, vendor().on(KLINES, "klines_BTCUSDT_1m_page1.json").on(KLINES, body=bad)
    )
    got: list[pa.Table] = []
    with pytest.raises(ProviderError, match="kline field 'open' of BTCUSDT is not a number"):
        await until_it_fails(provider, got)
    first = parse_klines(
        orjson.loads((DATA / "klines_BTCUSDT_1m_page1.json").read_bytes()), "BTCUSDT", "1m"
    )
    assert pa.concat_tables(got).equals(first)


def test_pages_read_together_keep_the_ones_before_a_wrong_page_and_its_error() -> None:
    good, odd, bad = (
        (DATA / f"klines_BTCUSDT_1m_page{n}.json").read_bytes().strip() for n in (1, 3, 2)
    )
    provider, _ = make(BinanceProvider, vendor())
    pages: list[httpx.Response | pa.Table] = [
        httpx.Response(200, content=good),
        parse_klines(orjson.loads(odd), "BTCUSDT", "1m"),  # a page read when it came
        httpx.Response(200, content=bad.replace(b'"62301.36000000"', b'"x"', 1)),
        httpx.Response(200, content=good),
    ]
    table, error = provider._read_pages(pages, "BTCUSDT", "1m")
    assert table.equals(
        pa.concat_tables(
            [parse_klines(orjson.loads(body), "BTCUSDT", "1m") for body in (good, odd)]
        )
    )
    assert isinstance(error, ProviderError)
    assert "field 'open' of BTCUSDT is not a number" in error.message


async def test_a_failed_request_after_good_pages_yields_them_first() -> None:
    v = (
        vendor()
        .on(KLINES, "klines_BTCUSDT_1m_page1.json")
        .on(KLINES, status=400, body=b'{"code":-1121,"msg":"x"}')
    )
    provider, _ = make(BinanceProvider, v)
    got: list[pa.Table] = []
    with pytest.raises(SymbolNotFoundError):
        await until_it_fails(provider, got)
    assert [t.num_rows for t in got] == [3]


async def test_a_fetch_closed_early_leaves_no_request_running() -> None:
    v = paged()
    provider, _ = make(BinanceProvider, v)
    provider.pages_ahead = 1  # the requests wait for the reader after one page
    tables = provider.fetch_bars("BTCUSDT", "1m", START, END)
    first = await anext(tables)
    await tables.aclose()  # while the requests wait for room to hand over the next page
    assert first.num_rows == 3
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_a_page_that_does_not_move_on_is_an_error_not_an_endless_loop() -> None:
    v = vendor().on(KLINES, "klines_BTCUSDT_1m_page1.json", times=2)
    with pytest.raises(
        ProviderError,
        match=r"binance answered the klines from startTime="
        rf"{T0 + 120_001} with the page before it",
    ):
        await fetch(v)
    assert len(v.requests) == 2


async def test_pages_that_are_not_plain_still_page_on() -> None:
    """A page the fetch cannot read off its bytes (spaces) is parsed to find where it ends."""
    pretty = [
        orjson.dumps(
            orjson.loads((DATA / f"klines_BTCUSDT_1m_page{n}.json").read_bytes()),
            option=orjson.OPT_INDENT_2,
        )
        for n in (1, 2, 3)
    ]
    v = vendor()
    for body in pretty:
        v.on(KLINES, body=body)
    table, _, _ = await fetch(v)
    assert table.num_rows == 7
    assert [p["startTime"] for p in v.params] == [str(T0), str(T0 + 120_001), str(T0 + 300_001)]


@pytest.mark.parametrize(
    "body",
    [
        b'[[1709510400000,"1","1","1","1","1",1709510459999,"1",1,"1","1","0",{"x":1}]]',
        b'[[1709510400000,"1","1","1","1","1",1709510459999,"1",1,"1","1","0"],]',
        b'[[1709510400000,"1","1","1","1","1",1709510459999,"1",1,"1","1"]]',
        b'[[1709510400000,null,"1","1","1","1",1709510459999,"1",1,"1","1","0"]]',
        b'[[1709510400000, "1","1","1","1","1",1709510459999,"1",1,"1","1","0"]]',
        b'[[1709510400000,"1","1","1","1","1",1709510459999,"1",1,"1","1","0"]',
        b'[[1709510400000,["1"],"1","1","1","1",1709510459999,"1",1,"1","1","0"]]',
        b'[[1709510400000,"1","1","1","1","1",1709510459999,"1",1,"1","1","0"],'
        b'[[1709510460000,"1","1","1","1","1",1709510519999,"1",1,"1","1","0"]]]',
        b'[[1709510400000,"1","1","1","1","1",1709510459999,"1",1,"1","1","0","0"]]',
        b'[[1709510400000,"1","1","1","1","1",1709510459999,"1",1,"1","1","0"],'
        b'[1709510460000,"1","1","1","1","1",1709510519999,"1",1,"1","1"]]',
    ],
)
def test_anything_but_the_plain_layout_is_left_to_the_json_parser(body: bytes) -> None:
    assert read_plain_klines([body], "BTCUSDT", "1m") is None


def _decimals(low: int) -> st.SearchStrategy[str]:
    """Decimal strings with 8 places, as Binance sends prices and volumes."""
    return st.integers(low, 10**15).map(lambda n: f"{n // 10**8}.{n % 10**8:08d}")


@st.composite
def klines(draw: st.DrawFn) -> list[list[Any]]:
    """REST kline arrays with consistent prices, some without volume."""
    rows = []
    for i in range(draw(st.integers(1, 20))):
        low, o, c, high = sorted(draw(st.lists(_decimals(1), min_size=4, max_size=4)), key=float)
        if draw(st.booleans()):
            o, c = c, o
        volume = draw(st.sampled_from(["0.00000000", "0"]) | _decimals(0))
        t = T0 + i * 60_000
        trades = draw(st.integers(0, 10**6))
        rows.append([t, o, high, low, c, volume, t + 59_999, draw(_decimals(0)), trades, "0", "0"])
        rows[-1].append("0")
    return rows


@settings(max_examples=40, deadline=None)
@given(klines())
def test_the_rest_and_websocket_parsers_give_the_same_bars(rows: list[list[Any]]) -> None:
    """One kline, one bar: the CSV read, the JSON parse and the websocket parse agree, and
    the vwap is quote volume / volume, null without volume."""
    body = orjson.dumps(rows)
    plain = read_plain_klines([body], "BTCUSDT", "1m")
    assert plain is not None
    assert plain.equals(parse_klines(orjson.loads(body), "BTCUSDT", "1m"))
    keys = ("t", "o", "h", "l", "c", "v", "T", "q", "n", "V", "Q", "B")
    events = [
        parse_kline_event(
            dict(zip(keys, row, strict=True)) | {"s": "btcusdt", "i": "1m", "x": True}
        )
        for row in rows
    ]
    bars = plain.to_pylist()
    for event, bar, row in zip(events, bars, rows, strict=True):
        assert (event.symbol, event.interval, event.final) == ("BTCUSDT", "1m", True)
        assert event.ts == int(bar["ts"].timestamp()) * 1_000_000 == row[0] * 1000
        assert tuple(event[-len(BAR_VALUES) + 1 :]) == tuple(bar[k] for k in BAR_VALUES[1:])
        volume, quote = float(row[5]), float(row[7])
        assert bar["vwap"] == (quote / volume if volume > 0 else None)
