"""The Python API's contract: the same test bodies on the local and the remote transport.

``local`` opens a DuckDB file in this process; ``remote`` talks to a real
``marketlake serve`` process over its own DuckDB file, seeded the same way. Each
test runs on both, and ``test_both_transports_give_equal_frames`` compares them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import marketlake as ml
from marketlake.api.keys import create_key
from marketlake.errors import ConflictError, InputError, MarketLakeError, NotFoundError
from marketlake.providers.synthetic import generate_bars
from marketlake.schema import Instrument, normalize_trades
from marketlake.store import open_store
from marketlake.timeseries.adjust import ACTION_SCHEMA
from tests.api.server import running

START = datetime(2024, 3, 4, tzinfo=UTC)
END = datetime(2024, 3, 9, tzinfo=UTC)
HOLE = (datetime(2024, 3, 5, 6, tzinfo=UTC), datetime(2024, 3, 5, 12, tzinfo=UTC))


def _seed(uri: str) -> str:
    store = open_store(uri)
    try:
        store.add_instrument(Instrument(symbol="AAPL", name="Apple (synthetic)"))
        store.add_instrument(Instrument(symbol="BTCUSDT", asset_class="crypto", timezone="UTC"))
        for symbol in ("AAPL", "BTCUSDT"):
            store.write_bars(generate_bars(symbol, "5m", START, END))
            store.write_bars(generate_bars(symbol, "1d", START, END))
        # crypto series with a hole of 6 hours: one to validate, one to repair
        for symbol in ("GAPUSDT", "HOLEUSDT"):
            store.add_instrument(Instrument(symbol=symbol, asset_class="crypto", timezone="UTC"))
            hourly = generate_bars(symbol, "1h", START, END)
            keep = pc.invert(pc.and_(pc.greater_equal(hourly["ts"], HOLE[0]),
                                     pc.less(hourly["ts"], HOLE[1])))  # fmt: skip
            store.write_bars(hourly.filter(keep))
        store.write_trades(
            normalize_trades(
                pa.table({
                    "ts": [START + timedelta(minutes=m) for m in (1, 2, 3)],
                    "price": [62_000.0, 62_010.5, 61_990.25],
                    "size": [0.5, 0.1, 1.25],
                    "side": ["buy", "sell", "buy"],
                    "trade_id": ["t1", "t2", "t3"],
                }),
                symbol="BTCUSDT",
                source="binance",
            )
        )  # fmt: skip
        store.write_actions(
            pa.table(
                {"symbol": ["AAPL"], "ts": [datetime(2024, 3, 6, tzinfo=UTC)],
                 "kind": ["dividend"], "value": [0.5], "source": ["yahoo"]},
                schema=ACTION_SCHEMA,
            ),
        )  # fmt: skip
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
    close = df["close"].to_numpy().copy()
    df["close"] *= 2  # the user's own frame: writable, not a read-only view of Arrow memory
    df.iloc[0, 0] = -1.0
    assert (df["close"].to_numpy() == close * 2).all()
    assert df.iloc[0, 0] == -1.0


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


def test_trades_coverage_and_actions_are_frames(lake: ml.Lake) -> None:
    trades = lake.trades("BTCUSDT", start=START, end=END)
    assert list(trades.columns) == ["price", "size", "side", "trade_id", "source"]
    assert str(trades.index.tz) == "UTC"
    assert list(trades["trade_id"]) == ["t1", "t2", "t3"]
    assert trades["price"].iloc[1] == 62_010.5
    assert len(lake.trades("BTCUSDT", start="2024-03-04T00:02")) == 2
    assert lake.trades("AAPL").empty

    coverage = lake.coverage(["BTCUSDT", "AAPL"], "5m")
    assert list(coverage["symbol"]) == ["AAPL", "BTCUSDT"]
    assert list(coverage["bars"]) == [5 * 78, 5 * 24 * 12]
    assert coverage["first"].iloc[0] == pd.Timestamp("2024-03-04 14:30", tz="UTC")
    everything = lake.coverage()
    assert {("GAPUSDT", "1h"), ("AAPL", "1d")} <= set(
        zip(everything["symbol"], everything["timeframe"], strict=True)
    )

    actions = lake.actions("AAPL")
    assert list(actions.columns) == ["kind", "value", "source"]
    assert actions.index[0] == pd.Timestamp("2024-03-06", tz="UTC")
    assert (actions["kind"].iloc[0], actions["value"].iloc[0]) == ("dividend", 0.5)
    assert lake.actions("BTCUSDT").empty


@pytest.mark.parametrize(
    "call",
    [
        lambda lake: lake.bars(["AAPL", "NOPE"], "1d"),
        lambda lake: lake.trades("NOPE"),
        lambda lake: lake.coverage(["NOPE"]),
        lambda lake: lake.actions("NOPE"),
        lambda lake: lake.validate("NOPE"),
        lambda lake: lake.aggregate("NOPE", "5m", "1h"),
        lambda lake: lake.repair("NOPE", "1h"),
        lambda lake: lake.sweep("sma_cross", "NOPE", "1d", grid={"fast": [3]}),
    ],
    ids=["bars", "trades", "coverage", "actions", "validate", "aggregate", "repair", "sweep"],
)
def test_an_unknown_symbol_is_not_found_everywhere(lake: ml.Lake, call: Any) -> None:
    with pytest.raises(NotFoundError, match="NOPE"):
        call(lake)


@pytest.mark.parametrize(
    "call",
    [
        lambda lake: lake.bars(["AAPL", "BTCUSDT"], "7q"),
        lambda lake: lake.coverage(timeframe="7q"),
        lambda lake: lake.validate("AAPL", "7q"),
        lambda lake: lake.aggregate("AAPL", "5m", "7q"),
        lambda lake: lake.repair("AAPL", "7q"),
        lambda lake: lake.sweep("sma_cross", "AAPL", "7q", grid={"fast": [3]}),
    ],
    ids=["bars", "coverage", "validate", "aggregate", "repair", "sweep"],
)
def test_a_bad_timeframe_is_input_error_everywhere(lake: ml.Lake, call: Any) -> None:
    with pytest.raises(InputError, match="7q"):
        call(lake)


def test_validate_returns_findings_and_a_summary(lake: ml.Lake) -> None:
    report = lake.validate("GAPUSDT", "1h", start=START, end=END)
    assert isinstance(report, ml.ValidationReport)
    series = report.series.set_index("symbol")
    assert series.loc["GAPUSDT", "bars"] == 5 * 24 - 6
    assert series.loc["GAPUSDT", "missing"] == 6
    assert len(report.findings) >= 1
    assert set(report.findings["symbol"]) == {"GAPUSDT"}
    assert str(report.findings["ts"].dt.tz) == "UTC"
    assert report.summary["findings"] == len(report.findings)
    clean = lake.validate("BTCUSDT", "5m")
    assert clean.findings.empty
    assert clean.series["missing"].sum() == 0
    jobs = lake.jobs()
    assert report.job_id in set(jobs["id"])
    assert set(jobs.loc[jobs["id"] == report.job_id, "kind"]) == {"validate"}


def test_aggregate_and_repair_run_as_jobs(lake: ml.Lake) -> None:
    rolled = lake.aggregate("BTCUSDT", "5m", ["1h", "4h"], start=START, end=END)
    assert list(rolled["timeframe"]) == ["1h", "4h"]
    assert list(rolled["bars"]) == [5 * 24, 5 * 6]
    assert str(rolled["first"].dt.tz) == "UTC"
    assert len(lake.bars("BTCUSDT", "4h", start=START, end=END)) == 30
    job = lake.repair("HOLEUSDT", "1h")
    assert (job["kind"], job["status"]) == ("repair", "succeeded")
    assert job["summary"]["missing_before"] == 6
    assert job["summary"]["filled"] == 6
    assert job["summary"]["missing_after"] == 0
    assert len(lake.bars("HOLEUSDT", "1h", start=START, end=END)) == 5 * 24


def test_import_csv_returns_the_job(lake: ml.Lake, tmp_path: Path) -> None:
    good = tmp_path / "csvx.csv"
    good.write_text(
        "Date,Open,High,Low,Close,Volume\n2024-01-02,10,11,9.5,10.5,1000\n"
        "2024-01-03,10.5,11.5,10,11,1200\n2024-01-04,11,11.2,10.1,10.2,900\n"
    )
    job = lake.import_csv(good, symbol="csvx", timeframe="1d")
    assert (job["kind"], job["status"]) == ("import", "succeeded")
    assert job["summary"]["inserted"] == 3
    assert "path" not in job["summary"]
    assert list(lake.bars("CSVX", "1d")["close"]) == [10.5, 11.0, 10.2]
    again = lake.import_csv(good, symbol="CSVX", timeframe="1d")
    assert (again["summary"]["inserted"], again["summary"]["duplicates"]) == (0, 3)
    bad = tmp_path / "bad.csv"
    bad.write_text("Date,Open,High,Low,Close,Volume\n2024-01-05,10,oops,9,10,1\n")
    with pytest.raises(InputError, match="line 2"):
        lake.import_csv(bad, symbol="CSVX", timeframe="1d")
    assert len(lake.bars("CSVX", "1d")) == 3  # nothing written
    with pytest.raises(InputError, match="no such file"):
        lake.import_csv(tmp_path / "missing.csv", symbol="CSVX")


def test_sweep_returns_a_ranked_frame(lake: ml.Lake) -> None:
    df = lake.sweep(
        "sma_cross", "AAPL", "5m", grid={"fast": [3, 5], "slow": [12, 20]}, start=START, end=END
    )
    assert len(df) == 4
    assert {(r.fast, r.slow) for r in df.itertuples()} == {(3, 12), (3, 20), (5, 12), (5, 20)}
    assert df["sharpe"].is_monotonic_decreasing
    assert df.attrs["sort"] == "sharpe"
    assert df.attrs["id"]
    with pytest.raises(InputError, match="unknown parameter"):
        lake.sweep("sma_cross", "AAPL", "5m", grid={"speed": [1]})


def test_several_symbols_travel_in_one_request(server: tuple[str, str]) -> None:
    url, key = server
    with ml.connect(url, api_key=key) as lake:
        paths: list[str] = []
        lake._t._http.event_hooks["request"].append(lambda r: paths.append(r.url.path))  # type: ignore[attr-defined]
        df = lake.bars(["BTCUSDT", "AAPL", "GAPUSDT"], "1d", start=START, end=END)
    assert paths == ["/api/v1/bars"]
    assert list(df["symbol"].unique()) == ["AAPL", "BTCUSDT"]  # GAPUSDT has no 1d bars


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
        for call in (
            lambda lake: lake.trades("BTCUSDT", start=START),
            lambda lake: lake.actions("AAPL"),
            lambda lake: lake.coverage(["AAPL", "BTCUSDT"], "5m"),
            lambda lake: lake.validate("GAPUSDT", "1h").findings.drop(columns="values"),
            lambda lake: lake.validate("GAPUSDT", "1h").series,
            lambda lake: lake.sweep("sma_cross", "AAPL", "5m", grid={"fast": [3, 5],
                                    "slow": [12]}, start=START, end=END),
        ):  # fmt: skip
            pd.testing.assert_frame_equal(call(local), call(remote))
        for symbols in (["AAPL"], ["AAPL", "BTCUSDT"]):  # a dividend on 2024-03-06
            a = local.bars(symbols, "5m", start=START, end=END, adjusted=True)
            b = remote.bars(symbols, "5m", start=START, end=END, adjusted=True)
            pd.testing.assert_frame_equal(a, b)
            assert not a["close"].equals(local.bars(symbols, "5m", start=START, end=END)["close"])
        for as_ in ("polars", "arrow"):
            a = local.bars(["AAPL", "BTCUSDT"], "5m", start=START, end=END, as_=as_)
            b = remote.bars(["AAPL", "BTCUSDT"], "5m", start=START, end=END, as_=as_)
            assert a.equals(b)


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


def test_a_file_above_the_servers_body_limit_says_so(tmp_path: Path) -> None:
    uri = f"duckdb:///{tmp_path}/small.duckdb"
    key = _seed(uri)
    big = tmp_path / "big.csv"
    big.write_text("Date,Open,High,Low,Close,Volume\n" + "2024-01-02,10,11,9,10.5,100\n" * 100)
    with (
        running(
            ["--store", uri, "serve"], tmp_path / "serve.log",
            env={"MARKETLAKE_API_MAX_BODY_BYTES": "1024"},
        ) as (url, _),
        ml.connect(url, api_key=key) as lake,
        pytest.raises(InputError, match=r"big\.csv is too large to upload") as caught,
    ):  # fmt: skip
        lake.import_csv(big, symbol="BIG", timeframe="1d")
    assert "1,024 bytes" in caught.value.message
    assert "marketlake import-csv" in caught.value.message


def test_thousands_of_symbols_go_in_as_few_requests_as_the_route_takes() -> None:
    from marketlake.client.remote import _groups

    names = [f"S{i:04d}" for i in range(1200)]
    groups = _groups(names)
    assert [len(g) for g in groups] == [500, 500, 200]
    assert [s for g in groups for s in g] == names
    long = [f"{'X' * 60}{i:03d}" for i in range(100)]
    assert all(len(",".join(g)) <= 4000 for g in _groups(long))
    assert len(_groups(long)) == 2
    assert _groups(["AAPL", "MSFT"]) == [["AAPL", "MSFT"]]
