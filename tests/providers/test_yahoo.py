"""Yahoo chart API: recorded answers become raw, trading-date-labelled canonical bars."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from marketlake.errors import InputError, ProviderAuthError, ProviderError, SymbolNotFoundError
from marketlake.providers.yahoo import YahooProvider
from tests.providers.vendor import Vendor, collect, make

CHART = "/v8/finance/chart/AAPL"


def day(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=UTC)


async def fetch(
    v: Vendor, symbol: str, timeframe: str, start: datetime, end: datetime, now: datetime
) -> tuple[pa.Table, YahooProvider]:
    provider, _ = make(YahooProvider, v)
    provider.clock = lambda: now
    tables = await collect(provider, symbol, timeframe, start, end)
    table = pa.concat_tables(tables) if tables else pa.table({"ts": pa.array([], pa.int64())})
    return table, provider


def split_2020() -> Vendor:
    return (
        Vendor("yahoo")
        .on(CHART, "chart_AAPL_1mo_events_2020.json", params={"interval": "1mo"})
        .on(CHART, "chart_AAPL_1d_2020-08.json", params={"interval": "1d"})
    )


async def test_daily_bars_are_labelled_by_trading_date_and_split_adjustment_is_undone() -> None:
    table, _ = await fetch(
        split_2020(), "AAPL", "1d", day(2020, 8, 26), day(2020, 9, 3), now=day(2020, 9, 10)
    )
    assert table.column("ts").to_pylist() == [
        day(2020, 8, 26),
        day(2020, 8, 27),
        day(2020, 8, 28),
        day(2020, 8, 31),
        day(2020, 9, 1),
        day(2020, 9, 2),
    ]
    assert table.slice(0, 1).to_pylist()[0] == {
        "symbol": "AAPL",
        "timeframe": "1d",
        "ts": day(2020, 8, 26),
        "open": 126.18000030517578 * 4,
        "high": 126.99250030517578 * 4,
        "low": 125.0824966430664 * 4,
        "close": 506.0899963378906,
        "volume": 40755600.0,
        "trades": None,
        "vwap": None,
        "source": "yahoo",
    }
    assert table.column("close").to_pylist() == [
        506.0899963378906,
        500.0400085449219,
        499.2300109863281,
        129.0399932861328,
        134.17999267578125,
        131.39999389648438,
    ]
    assert table.column("volume").to_pylist() == [
        40755600.0,
        38888100.0,
        46907500.0,
        225702700.0,
        151948100.0,
        200119000.0,
    ]


async def test_splits_to_today_come_from_one_monthly_request_beside_the_bars() -> None:
    """Both requests are in flight together: the bars first, the splits to today meanwhile."""
    v = split_2020()
    await fetch(v, "AAPL", "1d", day(2020, 8, 26), day(2020, 9, 3), now=day(2020, 9, 10))
    assert v.params == [
        {
            "period1": "1598313600",
            "period2": "1599091200",
            "interval": "1d",
            "includePrePost": "false",
            "events": "div,splits",
        },
        {
            "period1": "1598313600",
            "period2": "1599696000",
            "interval": "1mo",
            "includePrePost": "false",
            "events": "div,splits",
        },
    ]


async def test_a_failing_splits_request_fails_the_fetch_though_the_bars_arrived() -> None:
    v = (
        Vendor("yahoo")
        .on(CHART, "error_unprocessable.json", params={"interval": "1mo"}, status=422)
        .on(CHART, "chart_AAPL_1d_2020-08.json", params={"interval": "1d"})
    )
    with pytest.raises(InputError):
        await fetch(v, "AAPL", "1d", day(2020, 8, 26), day(2020, 9, 3), now=day(2020, 9, 10))


async def test_failing_bars_are_the_error_reported_while_the_splits_request_is_pending() -> None:
    v = (
        Vendor("yahoo")
        .on(CHART, "chart_AAPL_1mo_events_2020.json", params={"interval": "1mo"})
        .on(CHART, "error_not_found.json", params={"interval": "1d"}, status=404)
    )
    with pytest.raises(SymbolNotFoundError, match="AAPL"):
        await fetch(v, "AAPL", "1d", day(2020, 8, 26), day(2020, 9, 3), now=day(2020, 9, 10))


async def test_splits_and_dividends_become_corporate_actions_as_paid() -> None:
    _, provider = await fetch(
        split_2020(), "AAPL", "1d", day(2020, 8, 26), day(2020, 9, 3), now=day(2020, 9, 10)
    )
    assert provider.corporate_actions("AAPL").to_pylist() == [
        {
            "symbol": "AAPL",
            "ts": day(2020, 8, 7),
            "kind": "dividend",
            "value": 0.82,
            "source": "yahoo",
        },
        {
            "symbol": "AAPL",
            "ts": day(2020, 8, 31),
            "kind": "split",
            "value": 4.0,
            "source": "yahoo",
        },
    ]


async def test_a_range_ending_today_needs_no_extra_request() -> None:
    v = Vendor("yahoo").on(CHART, "chart_AAPL_1d_2024-02.json")
    table, provider = await fetch(
        v, "AAPL", "1d", day(2024, 2, 8), day(2024, 2, 13), now=day(2024, 2, 13)
    )
    assert len(v.requests) == 1
    assert v.requests[0].headers["User-Agent"].startswith("Mozilla/5.0")
    assert table.column("ts").to_pylist() == [day(2024, 2, 8), day(2024, 2, 9), day(2024, 2, 12)]
    assert table.column("close").to_pylist() == [
        188.32000732421875,
        188.85000610351562,
        187.14999389648438,
    ]
    assert provider.corporate_actions("AAPL").to_pylist() == [
        {
            "symbol": "AAPL",
            "ts": day(2024, 2, 9),
            "kind": "dividend",
            "value": 0.24,
            "source": "yahoo",
        }
    ]


async def test_meta_describes_the_instrument() -> None:
    v = Vendor("yahoo").on("/v8/finance/chart/BHP.AX", "chart_BHP.AX_1d.json")
    _, provider = await fetch(
        v, "BHP.AX", "1d", day(2024, 3, 4), day(2024, 3, 6), now=day(2024, 3, 6)
    )
    info = await provider.describe("BHP.AX")
    assert info is not None
    assert (info.name, info.asset_class, info.exchange, info.currency, info.timezone) == (
        "BHP Group Limited",
        "stock",
        "ASX",
        "AUD",
        "Australia/Sydney",
    )


async def test_a_sydney_session_opening_the_evening_before_keeps_its_own_date() -> None:
    v = Vendor("yahoo").on("/v8/finance/chart/BHP.AX", "chart_BHP.AX_1d.json")
    table, _ = await fetch(v, "BHP.AX", "1d", day(2024, 3, 4), day(2024, 3, 6), now=day(2024, 3, 6))
    assert table.column("ts").to_pylist() == [day(2024, 3, 4), day(2024, 3, 5)]
    assert table.column("close").to_pylist() == [44.45000076293945, 44.29999923706055]
    assert v.params[0]["period1"] == str(int(day(2024, 3, 3).timestamp()))


def minute_chunks() -> Vendor:
    return (
        Vendor("yahoo")
        .on(CHART, "chart_AAPL_1mo_events_2024.json", params={"interval": "1mo"})
        .on(CHART, "chart_AAPL_1m_chunk1.json", params={"interval": "1m"})
        .on(CHART, "chart_AAPL_1m_chunk2.json", params={"interval": "1m"})
    )


async def test_1m_ranges_are_split_into_7_day_requests() -> None:
    v = minute_chunks()
    await fetch(v, "AAPL", "1m", day(2024, 3, 4, 13, 30), day(2024, 3, 12), now=day(2024, 3, 20))
    minutes = [(p["period1"], p["period2"]) for p in v.params if p["interval"] == "1m"]
    assert minutes == [
        (
            str(int(day(2024, 3, 4, 13, 30).timestamp())),
            str(int(day(2024, 3, 11, 13, 30).timestamp())),
        ),
        (str(int(day(2024, 3, 11, 13, 30).timestamp())), str(int(day(2024, 3, 12).timestamp()))),
    ]


async def test_null_entries_are_dropped_and_counted() -> None:
    table, provider = await fetch(
        minute_chunks(),
        "AAPL",
        "1m",
        day(2024, 3, 4, 13, 30),
        day(2024, 3, 12),
        now=day(2024, 3, 20),
    )
    assert table.column("ts").to_pylist() == [
        day(2024, 3, 4, 14, 30),
        day(2024, 3, 4, 14, 31),
        day(2024, 3, 4, 14, 33),
        day(2024, 3, 4, 14, 34),
        day(2024, 3, 11, 13, 30),
        day(2024, 3, 11, 13, 31),
        day(2024, 3, 11, 13, 32),
    ]
    assert table.column("close").to_pylist()[:4] == [175.16, 175.1, 175.06, 175.17]
    assert provider.dropped == {"AAPL": 1}


async def test_1m_beyond_30_days_is_refused_with_the_limit_and_no_request() -> None:
    v = Vendor("yahoo")
    with pytest.raises(InputError, match="yahoo keeps 1m bars for the last 30 days only"):
        await fetch(v, "AAPL", "1m", day(2024, 1, 2), day(2024, 1, 5), now=day(2024, 3, 20))
    assert v.requests == []


async def test_1h_beyond_730_days_states_its_limit() -> None:
    with pytest.raises(InputError, match="1h bars for the last 730 days only"):
        await fetch(
            Vendor("yahoo"), "AAPL", "1h", day(2020, 1, 2), day(2020, 1, 5), now=day(2024, 3, 20)
        )


async def test_an_empty_range_yields_nothing() -> None:
    table, _ = await fetch(
        Vendor("yahoo").on(CHART, "chart_AAPL_empty.json"),
        "AAPL",
        "1d",
        day(2024, 2, 10),
        day(2024, 2, 12),
        now=day(2024, 2, 12),
    )
    assert table.num_rows == 0


async def test_unknown_extra_fields_are_ignored() -> None:
    table, _ = await fetch(
        Vendor("yahoo").on(CHART, "chart_AAPL_extra_fields.json"),
        "AAPL",
        "1d",
        day(2024, 2, 8),
        day(2024, 2, 9),
        now=day(2024, 2, 9),
    )
    assert table.to_pylist() == [
        {
            "symbol": "AAPL",
            "timeframe": "1d",
            "ts": day(2024, 2, 8),
            "open": 189.38999938964844,
            "high": 189.5399932861328,
            "low": 187.35000610351562,
            "close": 188.32000732421875,
            "volume": 40962000.0,
            "trades": None,
            "vwap": None,
            "source": "yahoo",
        }
    ]


async def test_a_missing_close_array_is_a_clear_error() -> None:
    with pytest.raises(ProviderError, match=r"lacks indicators\.quote\[0\]\.close"):
        await fetch(
            Vendor("yahoo").on(CHART, "chart_AAPL_missing_close.json"),
            "AAPL",
            "1d",
            day(2024, 2, 8),
            day(2024, 2, 9),
            now=day(2024, 2, 9),
        )


async def test_unknown_symbol_says_no_such_symbol_at_yahoo() -> None:
    v = Vendor("yahoo").on("/v8/finance/chart/NOPE", "error_not_found.json", status=404)
    with pytest.raises(SymbolNotFoundError, match="no such symbol at yahoo: NOPE"):
        await fetch(v, "NOPE", "1d", day(2024, 2, 8), day(2024, 2, 9), now=day(2024, 2, 9))


async def test_a_range_yahoo_refuses_is_an_input_error_quoting_yahoo() -> None:
    v = Vendor("yahoo").on(CHART, "error_unprocessable.json", status=422)
    with pytest.raises(InputError, match="Only 7 days worth of 1m granularity"):
        await fetch(v, "AAPL", "1d", day(2024, 2, 8), day(2024, 2, 9), now=day(2024, 2, 9))


async def test_an_invalid_crumb_is_an_auth_error_without_retries() -> None:
    v = Vendor("yahoo").on(CHART, "error_unauthorized.json", status=401)
    with pytest.raises(ProviderAuthError, match="Invalid Crumb"):
        await fetch(v, "AAPL", "1d", day(2024, 2, 8), day(2024, 2, 9), now=day(2024, 2, 9))
    assert len(v.requests) == 1


async def test_a_plain_text_429_is_retried() -> None:
    v = (
        Vendor("yahoo")
        .on(CHART, "error_too_many_requests.txt", status=429)
        .on(CHART, "chart_AAPL_1d_2024-02.json")
    )
    table, _ = await fetch(v, "AAPL", "1d", day(2024, 2, 8), day(2024, 2, 13), now=day(2024, 2, 13))
    assert table.num_rows == 3


async def test_a_repeated_live_bar_keeps_the_newest_values() -> None:
    v = Vendor("yahoo").on(CHART, "chart_AAPL_1d_live_repeat.json")
    table, _ = await fetch(v, "AAPL", "1d", day(2024, 2, 8), day(2024, 2, 13), now=day(2024, 2, 13))
    assert table.column("ts").to_pylist() == [day(2024, 2, 8), day(2024, 2, 9), day(2024, 2, 12)]
    assert table.column("close").to_pylist()[-1] == 187.14999389648438


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"chart":{"result":null,"error":null}}', "has no result and no error"),
        (b'{"finance":{}}', "has no 'chart' object"),
        (
            b'{"chart":{"result":[{"meta":{"currency":"USD"},"timestamp":[1]}],"error":null}}',
            "lacks meta.exchangeTimezoneName",
        ),
    ],
)
async def test_answers_without_the_expected_structure_say_what_is_missing(
    body: bytes, message: str
) -> None:
    with pytest.raises(ProviderError, match=message):
        await fetch(
            Vendor("yahoo").on(CHART, body=body),
            "AAPL",
            "1d",
            day(2024, 2, 8),
            day(2024, 2, 9),
            now=day(2024, 2, 9),
        )


async def test_an_error_inside_a_200_answer_is_mapped_like_a_404() -> None:
    v = Vendor("yahoo").on("/v8/finance/chart/NOPE", "error_not_found.json", status=200)
    with pytest.raises(SymbolNotFoundError, match="no such symbol at yahoo: NOPE"):
        await fetch(v, "NOPE", "1d", day(2024, 2, 8), day(2024, 2, 9), now=day(2024, 2, 9))
