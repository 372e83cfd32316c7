"""Alpaca v2 stock bars and v1beta3 crypto bars: recorded answers become exact canonical rows."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from marketlake.errors import (
    ConfigError,
    InputError,
    ProviderAuthError,
    ProviderError,
    SymbolNotFoundError,
)
from marketlake.providers.alpaca import AlpacaProvider
from tests.providers.vendor import Vendor, collect, make

KEYS = {"alpaca_key_id": "AKTESTKEY0000001", "alpaca_secret_key": "s3cr3t-never-logged"}
START = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
END = datetime(2024, 3, 4, 14, 34, tzinfo=UTC)
SINGLE = "/v2/stocks/AAPL/bars"


def minute(mm: int) -> datetime:
    return datetime(2024, 3, 4, 14, mm, tzinfo=UTC)


async def fetch(
    v: Vendor,
    symbol: str = "AAPL",
    timeframe: str = "1m",
    start: datetime = START,
    end: datetime = END,
    **settings: Any,
) -> pa.Table:
    provider, _ = make(AlpacaProvider, v, **{**KEYS, **settings})
    tables = await collect(provider, symbol, timeframe, start, end)
    return pa.concat_tables(tables) if tables else pa.table({})


def paged() -> Vendor:
    return (
        Vendor("alpaca")
        .on(SINGLE, "stock_bars_AAPL_1Min_page1.json")
        .on(SINGLE, "stock_bars_AAPL_1Min_page2.json")
    )


async def test_stock_bars_follow_next_page_token() -> None:
    v = paged()
    table = await fetch(v)
    assert table.column("ts").to_pylist() == [minute(30), minute(31), minute(32), minute(33)]
    assert v.params == [
        {
            "timeframe": "1Min",
            "start": "2024-03-04T14:30:00Z",
            "end": "2024-03-04T14:34:00Z",
            "limit": "10000",
            "feed": "iex",
            "adjustment": "raw",
        },
        {
            "timeframe": "1Min",
            "start": "2024-03-04T14:30:00Z",
            "end": "2024-03-04T14:34:00Z",
            "limit": "10000",
            "feed": "iex",
            "adjustment": "raw",
            "page_token": "QUFQTHxNfDE3MDk1NjI2NjAwMDAwMDAwMDA=",
        },
    ]


async def test_stock_bars_become_exact_canonical_rows() -> None:
    table = await fetch(paged())
    assert table.slice(0, 1).to_pylist()[0] == {
        "symbol": "AAPL",
        "timeframe": "1m",
        "ts": minute(30),
        "open": 176.15,
        "high": 176.9,
        "low": 176.0,
        "close": 176.63,
        "volume": 1032476.0,
        "trades": 11547,
        "vwap": 176.457261,
        "source": "alpaca",
    }
    assert table.column("close").to_pylist() == [176.63, 176.35, 176.18, 176.01]
    assert table.column("trades").to_pylist() == [11547, 4472, 3851, 3990]


async def test_keys_go_in_the_documented_headers() -> None:
    v = paged()
    await fetch(v)
    assert v.requests[0].headers["APCA-API-KEY-ID"] == "AKTESTKEY0000001"
    assert v.requests[0].headers["APCA-API-SECRET-KEY"] == "s3cr3t-never-logged"


async def test_the_secret_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    v = (
        Vendor("alpaca")
        .on(SINGLE, "error_too_many_requests.json", status=429)
        .on(SINGLE, "error_forbidden.json", status=403)
    )
    with pytest.raises(ProviderAuthError) as raised:
        await fetch(v)
    assert caplog.records
    assert "s3cr3t" not in caplog.text
    assert "s3cr3t" not in str(raised.value)


async def test_the_sip_feed_setting_is_sent() -> None:
    v = paged()
    await fetch(v, alpaca_feed="sip")
    assert {p["feed"] for p in v.params} == {"sip"}


async def test_daily_bars_at_new_york_midnight_become_trading_dates() -> None:
    v = Vendor("alpaca").on(SINGLE, "stock_bars_AAPL_1Day.json")
    table = await fetch(
        v,
        timeframe="1d",
        start=datetime(2024, 3, 4, tzinfo=UTC),
        end=datetime(2024, 3, 6, tzinfo=UTC),
    )
    assert table.column("ts").to_pylist() == [
        datetime(2024, 3, 4, tzinfo=UTC),
        datetime(2024, 3, 5, tzinfo=UTC),
    ]
    assert v.params[0]["timeframe"] == "1Day"


async def test_multi_symbol_pages_hold_several_symbols() -> None:
    v = (
        Vendor("alpaca")
        .on("/v2/stocks/bars", "stock_bars_multi_page1.json")
        .on("/v2/stocks/bars", "stock_bars_multi_page2.json")
    )
    provider, _ = make(AlpacaProvider, v, **KEYS)
    pages = [t async for t in provider.fetch_bars_multi(["aapl", "msft"], "1m", START, END)]
    assert [p.num_rows for p in pages] == [3, 3]
    table = pa.concat_tables(pages)
    assert list(
        zip(table.column("symbol").to_pylist(), table.column("close").to_pylist(), strict=True)
    ) == [
        ("AAPL", 176.63),
        ("AAPL", 176.35),
        ("AAPL", 176.18),
        ("AAPL", 176.01),
        ("MSFT", 414.09),
        ("MSFT", 413.7),
    ]
    assert v.params[0]["symbols"] == "AAPL,MSFT"
    assert v.params[1]["page_token"] == "QUFQTHxNfDE3MDk1NjI3MjAwMDAwMDAwMDB8TVNGVA=="


async def test_stocks_and_crypto_cannot_share_a_request() -> None:
    provider, _ = make(AlpacaProvider, Vendor("alpaca"), **KEYS)
    with pytest.raises(InputError, match="different endpoints"):
        [t async for t in provider.fetch_bars_multi(["AAPL", "BTC/USD"], "1m", START, END)]


async def test_crypto_bars_need_no_keys_and_use_chicago_days() -> None:
    v = Vendor("alpaca").on("/v1beta3/crypto/us/bars", "crypto_bars_BTCUSD_1Day.json")
    provider, _ = make(AlpacaProvider, v)
    tables = await collect(
        provider,
        "btc/usd",
        "1d",
        datetime(2024, 3, 4, tzinfo=UTC),
        datetime(2024, 3, 6, tzinfo=UTC),
    )
    assert pa.concat_tables(tables).to_pylist()[0] == {
        "symbol": "BTC/USD",
        "timeframe": "1d",
        "ts": datetime(2024, 3, 4, tzinfo=UTC),
        "open": 63138.84,
        "high": 68470.2,
        "low": 62835.37,
        "close": 68318.17,
        "volume": 1.932118392,
        "trades": 3254,
        "vwap": 66123.63,
        "source": "alpaca",
    }
    assert "APCA-API-KEY-ID" not in v.requests[0].headers
    assert "feed" not in v.params[0]
    assert v.params[0]["symbols"] == "BTC/USD"


async def test_stock_bars_without_keys_say_which_settings_to_set() -> None:
    v = Vendor("alpaca")
    provider, _ = make(AlpacaProvider, v)
    with pytest.raises(ConfigError, match="MARKETLAKE_ALPACA_KEY_ID"):
        await collect(provider, "AAPL", "1m", START, END)
    assert v.requests == []


async def test_no_bars_is_an_empty_result() -> None:
    assert (await fetch(Vendor("alpaca").on(SINGLE, "stock_bars_AAPL_empty.json"))).num_rows == 0


async def test_unknown_extra_fields_are_ignored() -> None:
    table = await fetch(Vendor("alpaca").on(SINGLE, "stock_bars_AAPL_extra_fields.json"))
    assert table.column_names[-1] == "source"
    assert table.column("close").to_pylist() == [176.63]


@pytest.mark.parametrize(
    "file", ["stock_bars_AAPL_missing_close.json", "stock_bars_AAPL_null_close.json"]
)
async def test_a_bar_without_close_is_a_clear_error(file: str) -> None:
    with pytest.raises(ProviderError, match="alpaca bar of AAPL lacks field 'c' \\(close\\)"):
        await fetch(Vendor("alpaca").on(SINGLE, file))


async def test_invalid_symbol_says_no_such_symbol_at_alpaca() -> None:
    v = Vendor("alpaca").on("/v2/stocks/NOPE!/bars", "error_invalid_symbol.json", status=400)
    with pytest.raises(SymbolNotFoundError, match="no such symbol at alpaca: NOPE!"):
        await fetch(v, "NOPE!")


async def test_bad_keys_are_an_auth_error_and_later_calls_do_not_retry() -> None:
    v = Vendor("alpaca").on(SINGLE, "error_unauthorized.json", status=401)
    provider, _ = make(AlpacaProvider, v, **KEYS)
    for _ in range(2):
        with pytest.raises(ProviderAuthError, match="alpaca rejected the credentials"):
            await collect(provider, "AAPL", "1m", START, END)
    assert len(v.requests) == 1


async def test_a_sip_subscription_refusal_suggests_the_iex_feed() -> None:
    v = Vendor("alpaca").on(SINGLE, "error_sip_subscription.json", status=403)
    with pytest.raises(InputError, match="MARKETLAKE_ALPACA_FEED=iex"):
        await fetch(v, alpaca_feed="sip")


async def test_an_invalid_timeframe_answer_is_an_input_error() -> None:
    v = Vendor("alpaca").on(SINGLE, "error_invalid_timeframe.json", status=422)
    with pytest.raises(InputError, match="invalid timeframe"):
        await fetch(v)


async def test_a_gateway_html_page_is_retried_then_reported() -> None:
    v = (
        Vendor("alpaca")
        .on(SINGLE, "error_bad_gateway.html", status=502, times=3)
        .on(SINGLE, "stock_bars_AAPL_1Min_page2.json")
    )
    assert (await fetch(v)).num_rows == 2


async def test_describe_tells_stocks_from_crypto_pairs() -> None:
    provider, _ = make(AlpacaProvider, Vendor("alpaca"))
    stock, pair = await provider.describe("aapl"), await provider.describe("eth/btc")
    assert (stock.asset_class, stock.timezone, stock.currency) == (
        "stock",
        "America/New_York",
        "USD",
    )
    assert (pair.asset_class, pair.timezone, pair.currency) == ("crypto", "UTC", "BTC")
