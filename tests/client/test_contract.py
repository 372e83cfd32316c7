"""The Python API's contract: the same test bodies on the local and the remote transport.

``local`` opens a DuckDB file in this process; ``remote`` talks to a real
``marketlake serve`` process over its own DuckDB file, seeded the same way. Each
test runs on both, and ``test_both_transports_give_equal_frames`` compares them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import marketlake as ml
from marketlake.api.keys import create_key
from marketlake.errors import ConflictError, InputError, MarketLakeError, NotFoundError
from marketlake.providers.synthetic import generate_bars
from marketlake.schema import Instrument
from marketlake.store import open_store
from tests.api.server import running

START = datetime(2024, 3, 4, tzinfo=UTC)
END = datetime(2024, 3, 9, tzinfo=UTC)


def _seed(uri: str) -> str:
    store = open_store(uri)
    try:
        store.add_instrument(Instrument(symbol="AAPL", name="Apple (synthetic)"))
        store.add_instrument(Instrument(symbol="BTCUSDT", asset_class="crypto", timezone="UTC"))
        for symbol in ("AAPL", "BTCUSDT"):
            store.write_bars(generate_bars(symbol, "5m", START, END))
            store.write_bars(generate_bars(symbol, "1d", START, END))
        return create_key(store, "client-test", "read,write,admin")[1]
    finally:
        store.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    folder = tmp_path_factory.mktemp("remote")
    uri = f"duckdb:///{folder}/ml.duckdb"
    key = _seed(uri)
    with running(["--store", uri, "serve"], folder / "serve.log") as (url, _):
        yield url, key


@pytest.fixture(params=["local", "remote"])
def lake(
    request: pytest.FixtureRequest, tmp_path: Path, server: tuple[str, str]
) -> Iterator[ml.Lake]:
    if request.param == "local":
        uri = f"duckdb:///{tmp_path}/ml.duckdb"
        _seed(uri)
        with ml.connect(uri) as opened:
            yield opened
    else:
        url, key = server
        with ml.connect(url, api_key=key) as opened:
            yield opened


def test_bars_are_a_frame_with_a_utc_time_index(lake: ml.Lake) -> None:
    df = lake.bars("AAPL", "5m", start="2024-03-04", end="2024-03-06")
    assert isinstance(df, pd.DataFrame)
    assert str(df.index.tz) == "UTC"
    assert df.index.name == "ts"
    assert df.index.is_monotonic_increasing
    assert list(df.columns[:5]) == ["open", "high", "low", "close", "volume"]
    assert len(df) == 2 * 78  # two sessions of 5-minute bars
    assert df.index[0] == pd.Timestamp("2024-03-04 14:30", tz="UTC")


def test_several_symbols_come_in_long_format(lake: ml.Lake) -> None:
    df = lake.bars(["AAPL", "BTCUSDT"], "1d", start=START, end=END)
    assert set(df["symbol"]) == {"AAPL", "BTCUSDT"}
    wide = df.pivot(columns="symbol", values="close")
    assert list(wide.columns) == ["AAPL", "BTCUSDT"]
    assert wide["BTCUSDT"].notna().sum() == 5  # every day
    assert wide["AAPL"].notna().sum() == 5  # Mon-Fri


@pytest.mark.parametrize("as_", ["polars", "arrow"])
def test_bars_as_polars_or_arrow(lake: ml.Lake, as_: str) -> None:
    out = lake.bars("BTCUSDT", "1d", start=START, end=END, as_=as_)  # type: ignore[arg-type]
    if as_ == "arrow":
        assert isinstance(out, pa.Table)
        assert out.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    else:
        import polars as pl

        assert isinstance(out, pl.DataFrame)
    assert len(out) == 5


def test_instruments_add_get_remove(lake: ml.Lake) -> None:
    listed = lake.instruments()
    assert {"AAPL", "BTCUSDT"} <= set(listed.index)
    created = lake.add_instrument("msft", name="Microsoft", exchange="XNAS")
    assert created["symbol"] == "MSFT"
    assert lake.instrument("MSFT")["name"] == "Microsoft"
    with pytest.raises(ConflictError):
        lake.add_instrument("MSFT")
    lake.remove_instrument("MSFT")
    with pytest.raises(NotFoundError, match="unknown symbol"):
        lake.instrument("MSFT")


def test_bad_input_is_one_clear_exception(lake: ml.Lake) -> None:
    with pytest.raises(NotFoundError, match="NOPE"):
        lake.bars("NOPE", "1d")
    with pytest.raises(InputError, match="timeframe"):
        lake.bars("AAPL", "7q")
    with pytest.raises(InputError, match="as_"):
        lake.bars("AAPL", "1d", as_="excel")  # type: ignore[arg-type]


def test_latest_price_and_jobs(lake: ml.Lake) -> None:
    latest = lake.latest("BTCUSDT")
    assert latest["symbol"] == "BTCUSDT"
    assert latest["price"] > 0
    job = lake.ingest("synthetic", "ETHUSDT", "1h", start="2024-03-04", end="2024-03-05",
                      progress=False)  # fmt: skip
    assert job["status"] == "succeeded"
    assert lake.bars("ETHUSDT", "1h").shape[0] == 24
    assert job["id"] in set(lake.jobs()["id"])


def test_backtest_returns_stats_trades_equity_and_html(lake: ml.Lake) -> None:
    run = lake.backtest("sma_cross", "AAPL", "5m", start=START, end=END, fast=5, slow=20)
    assert run.stats["bars"] == 5 * 78
    assert len(run.trades) == run.stats["trades"] + run.stats["open_trades"]
    assert str(run.equity.index.tz) == "UTC"
    assert "sharpe" in run._repr_html_()
    portfolio = lake.backtest(
        "equal_weight", ["AAPL", "BTCUSDT"], "1d", start=START, end=END,
        config={"fractional": True, "rebalance": "daily"},
    )  # fmt: skip
    assert portfolio.request["kind"] == "portfolio"
    assert set(portfolio.stats["weights"]) == {"AAPL", "BTCUSDT"}


def test_walk_forward_returns_windows_and_stability(lake: ml.Lake) -> None:
    run = lake.walk_forward(
        "sma_cross", "BTCUSDT", "5m", grid={"fast": [3, 5], "slow": [12, 20]}, windows=3,
        start=START, end=END, config={"fractional": True},
    )  # fmt: skip
    assert run.request["kind"] == "walk_forward"
    assert len(run.trades) == 3  # one row per window
    assert {"param_fast", "param_slow"} <= set(run.trades.columns)
    assert {s["parameter"] for s in run.stats["stability"]} == {"fast", "slow"}
    assert str(run.equity.index.tz) == "UTC"


def test_both_transports_give_equal_frames(tmp_path: Path, server: tuple[str, str]) -> None:
    url, key = server
    uri = f"duckdb:///{tmp_path}/ml.duckdb"
    _seed(uri)
    with ml.connect(uri) as local, ml.connect(url, api_key=key) as remote:
        for symbols, tf in ((["AAPL"], "5m"), (["AAPL", "BTCUSDT"], "1d")):
            a = local.bars(symbols, tf, start=START, end=END)
            b = remote.bars(symbols, tf, start=START, end=END)
            pd.testing.assert_frame_equal(a, b)
        a, b = local.instruments(), remote.instruments()
        pd.testing.assert_frame_equal(a.loc[["AAPL", "BTCUSDT"]], b.loc[["AAPL", "BTCUSDT"]])
        assert local.latest("AAPL") == remote.latest("AAPL")


def test_connect_goes_through_the_server_that_holds_the_file(tmp_path: Path) -> None:
    uri = f"duckdb:///{tmp_path}/held.duckdb"
    _seed(uri)
    # the file is locked by the server: connect() goes through it, no local open
    with (
        running(["--store", uri, "serve"], tmp_path / "serve.log") as (url, _),
        ml.connect(uri) as lake,
    ):
        assert repr(lake) == f"<Lake {url}>"
        assert len(lake.bars("BTCUSDT", "1d", start=START, end=END)) == 5
    with ml.connect(uri) as lake:  # the server is gone: the file opens here again
        assert repr(lake) == f"<Lake {uri}>"
        assert len(lake.bars("BTCUSDT", "1d", start=START, end=END)) == 5


def test_an_unreachable_server_is_one_line() -> None:
    with (
        ml.connect("http://127.0.0.1:9", api_key="x") as lake,
        pytest.raises(
            MarketLakeError,
            match=re.escape("cannot reach the MarketLake server at http://127.0.0.1:9"),
        ),
    ):
        lake.instruments()


def test_import_marketlake_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, marketlake; heavy = {'duckdb', 'pyarrow', 'pandas', 'polars', 'fastapi', "
        "'numba', 'httpx'} & set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert callable(ml.connect)
