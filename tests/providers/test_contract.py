"""The provider contract, run over every registered provider.

HTTP providers talk to the local vendor mirror; the csv provider reads files
written from the same synthetic market; synthetic needs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from marketlake.config import Settings
from marketlake.errors import InputError
from marketlake.providers import PROVIDERS, get_provider
from marketlake.providers.base import Provider
from marketlake.schema import BAR_SCHEMA, Timeframe
from marketlake.tools.mirror import Mirror, synthetic_source

SYMBOL = {"binance": "BTCUSDT"}
START, END = datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 7, tzinfo=UTC)
SETTINGS = Settings(alpaca_key_id="AKTEST", alpaca_secret_key="secret")


@pytest.fixture
def source(tmp_path: Path) -> Callable[[str, str, str], Provider]:
    """``(provider, symbol, timeframe)`` → a provider whose data is the synthetic market."""

    def make(name: str, symbol: str, timeframe: str) -> Provider:
        settings = SETTINGS.model_copy(update={"csv_dir": tmp_path})
        bars = synthetic_source(symbol, timeframe, START, END)
        as_file = bars.select(["open", "high", "low", "close", "volume", "trades", "vwap"])
        pacsv.write_csv(
            as_file.add_column(0, "ts", bars.column("ts").cast(pa.int64())),
            tmp_path / f"{symbol}.csv",
        )
        client = httpx.AsyncClient(transport=Mirror().transport())
        provider = get_provider(name, settings, client)
        provider.clock = lambda: END
        return provider

    return make


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_declares_name_timeframes_and_rate_limit(name: str) -> None:
    cls = PROVIDERS[name]
    assert cls.name == name == name.lower()
    assert all(str(Timeframe.parse(tf)) == tf for tf in cls.timeframes)
    assert cls.requests_per_minute > 0


@pytest.mark.parametrize("name", sorted(PROVIDERS))
@pytest.mark.parametrize("timeframe", ["1m", "1h", "1d"])
async def test_yields_canonical_bars_equal_to_the_source(
    name: str, timeframe: str, source: Callable[[str, str, str], Provider]
) -> None:
    symbol = SYMBOL.get(name, "AAPL")
    provider = source(name, symbol, timeframe)
    tables = [t async for t in provider.fetch_bars(symbol.lower(), timeframe, START, END)]
    await provider.aclose()
    assert tables
    assert all(t.schema.equals(BAR_SCHEMA) and t.num_rows for t in tables)
    got = pa.concat_tables(tables)
    want = synthetic_source(symbol, timeframe, START, END)
    assert got.column("ts").to_pylist() == want.column("ts").to_pylist()
    for column in ("open", "high", "low", "close", "volume"):
        assert got.column(column).to_pylist() == pytest.approx(
            want.column(column).to_pylist(), rel=1e-12
        ), column
    assert set(got.column("symbol").to_pylist()) == {symbol}
    assert set(got.column("timeframe").to_pylist()) == {timeframe}
    assert set(got.column("source").to_pylist()) == {name}


@pytest.mark.parametrize("name", sorted(PROVIDERS))
async def test_daily_bars_are_labelled_at_midnight_utc(
    name: str, source: Callable[[str, str, str], Provider]
) -> None:
    provider = source(name, SYMBOL.get(name, "AAPL"), "1d")
    tables = [t async for t in provider.fetch_bars(SYMBOL.get(name, "AAPL"), "1d", START, END)]
    ts = pa.concat_tables(tables).column("ts").cast(pa.int64()).to_pylist()
    assert len(ts) == 3
    assert all(t % 86_400_000_000 == 0 for t in ts)


@pytest.mark.parametrize("name", sorted(n for n, p in PROVIDERS.items() if p.timeframes))
async def test_refuses_a_timeframe_it_does_not_offer(
    name: str, source: Callable[[str, str, str], Provider]
) -> None:
    """Vendors have a fixed list of bar sizes (synthetic and CSV take any)."""
    provider = source(name, "AAPL", "1h")
    with pytest.raises(InputError, match=f"{name} does not offer timeframe 7m"):
        [t async for t in provider.fetch_bars("AAPL", "7m", START, END)]


@pytest.mark.parametrize("name", sorted(PROVIDERS))
async def test_an_empty_range_yields_no_rows(
    name: str, source: Callable[[str, str, str], Provider]
) -> None:
    saturday, sunday = datetime(2024, 3, 9, tzinfo=UTC), datetime(2024, 3, 10, tzinfo=UTC)
    provider = source(name, "AAPL", "1h")
    provider.clock = lambda: sunday
    tables = [t async for t in provider.fetch_bars("AAPL", "1h", saturday, sunday)]
    assert sum(t.num_rows for t in tables) == 0


def test_an_unknown_provider_names_the_known_ones() -> None:
    with pytest.raises(InputError, match="unknown provider 'nope'; choose one of alpaca, binance"):
        get_provider("nope", SETTINGS)
