"""Ingest jobs: concurrent, checked, idempotent, checkpointed and resumable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import httpx
import pyarrow as pa
import pytest

from marketlake.config import Settings
from marketlake.errors import InputError
from marketlake.ingest.jobs import run_ingest
from marketlake.providers.base import Provider
from marketlake.providers.binance.rest import BinanceProvider
from marketlake.providers.synthetic import SyntheticProvider
from marketlake.providers.yahoo import YahooProvider
from marketlake.schema import Timeframe
from marketlake.store.base import Store
from marketlake.tools.mirror import Mirror, synthetic_source
from tests.providers.vendor import Vendor, make

START, END = datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 5, tzinfo=UTC)
SETTINGS = Settings(binance_url="http://mirror.test")


def binance(mirror: Mirror) -> BinanceProvider:
    return BinanceProvider(SETTINGS, httpx.AsyncClient(transport=mirror.transport()))


def klines_starts(mirror: Mirror) -> list[int]:
    return sorted(int(k.split("startTime=")[1].split("&")[0]) for k in mirror.recorded)


async def test_every_symbol_is_stored_exactly_and_the_job_records_counts(duck: Store) -> None:
    result = await run_ingest(duck, binance(Mirror()), ["BTCUSDT", "ethusdt"], "1m", START, END)
    assert result.status == "succeeded"
    for symbol in ("BTCUSDT", "ETHUSDT"):
        stored = duck.read_bars(symbol, "1m", START, END).table
        source = synthetic_source(symbol, "1m", START, END)
        for name in ("ts", "open", "high", "low", "close", "volume", "trades"):
            assert stored.column(name).to_pylist() == source.column(name).to_pylist(), name
        assert stored.column("vwap").to_pylist() == pytest.approx(
            source.column("vwap").to_pylist(), rel=1e-12
        )
    job = duck.get_job(result.job_id)
    assert job.status == "succeeded"
    assert [
        (s["symbol"], s["fetched"], s["inserted"], s["duplicates"]) for s in job.summary["symbols"]
    ] == [("BTCUSDT", 1440, 1440, 0), ("ETHUSDT", 1440, 1440, 0)]


async def test_checkpoints_hold_the_last_stored_bar(duck: Store) -> None:
    await run_ingest(duck, binance(Mirror()), ["BTCUSDT"], "1m", START, END)
    assert duck.get_checkpoint("binance", "BTCUSDT", "1m") == END - timedelta(minutes=1)


async def test_running_a_job_twice_adds_nothing(duck: Store) -> None:
    mirror = Mirror()
    await run_ingest(duck, binance(mirror), ["BTCUSDT"], "1m", START, END)
    again = await run_ingest(duck, binance(mirror), ["BTCUSDT"], "1m", START, END)
    [symbol] = again.symbols
    assert (symbol.fetched, symbol.inserted, symbol.duplicates) == (1440, 0, 1440)
    assert duck.count_bars("BTCUSDT", "1m") == 1440


def shifted(symbol: str, timeframe: str, start: datetime, end: datetime) -> pa.Table:
    """The synthetic market with every price 1 % higher: a vendor that corrected its data."""
    table = synthetic_source(symbol, timeframe, start, end)
    for name in ("open", "high", "low", "close", "vwap"):
        index = table.schema.get_field_index(name)
        table = table.set_column(
            index,
            name,
            pa.array([round(v * 1.01, 6) for v in table.column(name).to_pylist()], pa.float64()),
        )
    return table


async def test_changed_bars_are_conflicts_unless_refreshed(duck: Store) -> None:
    await run_ingest(duck, binance(Mirror()), ["BTCUSDT"], "1m", START, END)
    kept = await run_ingest(duck, binance(Mirror(shifted)), ["BTCUSDT"], "1m", START, END)
    assert (kept.symbols[0].conflicts, kept.symbols[0].replaced) == (1440, 0)
    refreshed = await run_ingest(
        duck, binance(Mirror(shifted)), ["BTCUSDT"], "1m", START, END, refresh=True
    )
    assert (refreshed.symbols[0].conflicts, refreshed.symbols[0].replaced) == (0, 1440)
    stored = duck.read_bars("BTCUSDT", "1m", START, END).table.column("close").to_pylist()
    assert stored == shifted("BTCUSDT", "1m", START, END).column("close").to_pylist()


async def test_resume_continues_after_the_checkpoint(duck: Store) -> None:
    checkpoint = START + timedelta(hours=12) - timedelta(minutes=1)
    duck.ensure_instruments(["BTCUSDT"])
    duck.set_checkpoint("binance", "BTCUSDT", "1m", checkpoint)
    mirror = Mirror()
    result = await run_ingest(duck, binance(mirror), ["BTCUSDT"], "1m", START, END, resume=True)
    assert result.symbols[0].resumed_from == checkpoint.isoformat()
    assert result.symbols[0].fetched == 720
    assert klines_starts(mirror)[0] == int(checkpoint.timestamp() * 1000) + 1


async def test_resume_ignores_a_checkpoint_outside_the_range(duck: Store) -> None:
    duck.ensure_instruments(["BTCUSDT"])
    duck.set_checkpoint("binance", "BTCUSDT", "1m", END + timedelta(days=30))
    result = await run_ingest(duck, binance(Mirror()), ["BTCUSDT"], "1m", START, END, resume=True)
    assert (result.symbols[0].resumed_from, result.symbols[0].fetched) == (None, 1440)


async def test_one_failing_symbol_does_not_stop_the_others(duck: Store) -> None:
    v = (
        Vendor("binance")
        .on(
            "/api/v3/klines", "error_invalid_symbol.json", status=400, params={"symbol": "NOPEUSDT"}
        )
        .on("/api/v3/klines", "klines_BTCUSDT_1m_page3.json", params={"symbol": "BTCUSDT"})
    )
    provider, _ = make(BinanceProvider, v)
    result = await run_ingest(duck, provider, ["NOPEUSDT", "BTCUSDT"], "1m", START, END)
    assert result.status == "partial"
    assert [(s.symbol, s.fetched, s.error) for s in result.symbols] == [
        ("NOPEUSDT", 0, "no such symbol at binance: NOPEUSDT (Invalid symbol.)"),
        ("BTCUSDT", 1, None),
    ]
    job = duck.get_job(result.job_id)
    assert job.status == "partial"
    assert job.error == "NOPEUSDT: no such symbol at binance: NOPEUSDT (Invalid symbol.)"


async def test_bars_before_a_failure_are_kept_and_checkpointed(
    duck: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BinanceProvider, "page_limit", 3)
    v = (
        Vendor("binance")
        .on("/api/v3/klines", "klines_BTCUSDT_1m_page1.json")
        .on("/api/v3/klines", status=503, body=b"", times=5)
    )
    provider, _ = make(BinanceProvider, v)
    result = await run_ingest(duck, provider, ["BTCUSDT"], "1m", START, END)
    assert result.status == "failed"
    assert "circuit breaker is open" in (result.symbols[0].error or "")
    assert result.symbols[0].inserted == 3
    assert duck.get_checkpoint("binance", "BTCUSDT", "1m") == START + timedelta(minutes=2)


class BrokenBars(SyntheticProvider):
    """Synthetic bars whose third bar has its high below its low."""

    name: ClassVar[str] = "broken"

    async def fetch_bars(
        self, symbol: str, timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> AsyncGenerator[pa.Table, None]:
        async for table in super().fetch_bars(symbol, timeframe, start, end):
            high = table.column("high").to_pylist()
            high[2] = table.column("low")[2].as_py() - 1
            yield table.set_column(
                table.schema.get_field_index("high"), "high", pa.array(high, pa.float64())
            )


async def test_a_bar_breaking_ohlc_consistency_is_rejected_and_the_rest_written(
    duck: Store,
) -> None:
    """The quality policy rejects the broken bar (not stored, reported); the others land."""
    result = await run_ingest(
        duck, BrokenBars(SETTINGS), ["BTCUSDT"], "1m", START, END, rollup=False
    )
    done = result.symbols[0]
    assert (done.error, done.fetched, done.rejected, done.inserted) == (None, 1440, 1, 1439)
    assert duck.count_bars("BTCUSDT", "1m") == 1439
    broken = datetime(2024, 3, 4, 0, 2, tzinfo=UTC)
    assert broken not in duck.read_bars("BTCUSDT", "1m", START, END).table["ts"].to_pylist()


class Gauge(SyntheticProvider):
    """Synthetic bars, slowly, counting how many symbols are fetched at the same time."""

    name: ClassVar[str] = "gauge"
    active: ClassVar[int] = 0
    most: ClassVar[int] = 0

    async def fetch_bars(
        self, symbol: str, timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> AsyncGenerator[pa.Table, None]:
        Gauge.active += 1
        Gauge.most = max(Gauge.most, Gauge.active)
        await asyncio.sleep(0.02)
        async for table in super().fetch_bars(symbol, timeframe, start, end):
            yield table
        Gauge.active -= 1


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_at_most_concurrency_symbols_are_fetched_at_once(
    duck: Store, concurrency: int
) -> None:
    Gauge.most = 0
    symbols = [f"S{i}USDT" for i in range(7)]
    result = await run_ingest(
        duck, Gauge(SETTINGS), symbols, "1h", START, END, concurrency=concurrency
    )
    assert result.status == "succeeded"
    assert Gauge.most == concurrency
    assert [s.symbol for s in result.symbols] == symbols


async def test_concurrency_below_one_is_refused(duck: Store) -> None:
    with pytest.raises(InputError, match="--concurrency 0 must be at least 1"):
        await run_ingest(duck, Gauge(SETTINGS), ["AAPL"], "1h", START, END, concurrency=0)


async def test_a_range_the_provider_cannot_serve_is_refused_before_any_job(duck: Store) -> None:
    provider: Provider = YahooProvider(SETTINGS)
    with pytest.raises(InputError, match="yahoo keeps 1m bars for the last 30 days only"):
        await run_ingest(duck, provider, ["AAPL"], "1m", START, END)
    assert duck.list_jobs() == []


async def test_yahoo_actions_and_instrument_details_are_stored(duck: Store) -> None:
    v = (
        Vendor("yahoo")
        .on("/v8/finance/chart/AAPL", "chart_AAPL_1mo_events_2020.json", params={"interval": "1mo"})
        .on("/v8/finance/chart/AAPL", "chart_AAPL_1d_2020-08.json", params={"interval": "1d"})
    )
    provider, _ = make(YahooProvider, v)
    provider.clock = lambda: datetime(2020, 9, 10, tzinfo=UTC)
    result = await run_ingest(
        duck,
        provider,
        ["AAPL"],
        "1d",
        datetime(2020, 8, 26, tzinfo=UTC),
        datetime(2020, 9, 3, tzinfo=UTC),
    )
    assert (result.symbols[0].inserted, result.symbols[0].actions) == (6, 2)
    info = duck.instrument("AAPL")
    assert (info.name, info.exchange, info.timezone) == (
        "Apple Inc.",
        "NasdaqGS",
        "America/New_York",
    )
    assert not bool(duck.auto_registered(["AAPL"]))


async def test_progress_reports_rows_and_finishes_each_symbol(duck: Store) -> None:
    seen: list[tuple[str, int, float]] = []
    await run_ingest(
        duck,
        SyntheticProvider(SETTINGS),
        ["BTCUSDT"],
        "1h",
        START,
        END,
        progress=lambda s, n, f: seen.append((s, n, f)),
    )
    assert sum(n for _, n, _ in seen) == 24
    assert seen[-1] == ("BTCUSDT", 0, 1.0)
