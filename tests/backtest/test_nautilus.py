"""NautilusTrader interop: the catalog export and SMA-cross run in Nautilus' engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marketlake.backtest.data import Bars
from marketlake.backtest.engine import BacktestConfig, run
from marketlake.backtest.strategies import SmaCross
from marketlake.schema import Instrument

nautilus_trader = pytest.importorskip("nautilus_trader")
backtesting_test = pytest.importorskip("backtesting.test")

from marketlake.backtest import nautilus  # noqa: E402 - after the optional import


def _goog() -> Bars:
    frame = backtesting_test.GOOG
    ts = pd.DatetimeIndex(frame.index).tz_localize("UTC").asi8 // 1000
    return Bars(
        "GOOG",
        ts.astype(np.int64),
        *(frame[c].to_numpy(np.float64) for c in ("Open", "High", "Low", "Close", "Volume")),
    )


@pytest.mark.parametrize(("fast", "slow"), [(10, 30), (5, 20)])
def test_nautilus_trades_equal_marketlake_under_the_same_fill_rules(fast: int, slow: int) -> None:
    bars = _goog()
    ours = run([bars], SmaCross(fast=fast, slow=slow), BacktestConfig(fill="close", cash=100_000))
    theirs = nautilus.run_sma_cross(
        Instrument(symbol="GOOG", exchange="XNAS"), bars, "1d", fast=fast, slow=slow, cash=100_000
    )
    mine = ours.trades.to_pylist()
    assert len(theirs.trades) == len(mine) > 20
    for a, b in zip(mine, theirs.trades.to_pylist(), strict=True):
        assert b["size"] == a["size"]
        assert b["entry_time"] == a["entry_time"]
        assert b["entry_price"] == pytest.approx(a["entry_price"])
        assert b["exit_reason"] == a["exit_reason"]
        if a["exit_reason"] != "open":
            assert b["exit_time"] == a["exit_time"]
            assert b["exit_price"] == pytest.approx(a["exit_price"])
    assert theirs.final_equity == pytest.approx(ours.stats["final_equity"], rel=1e-9)


def test_catalog_holds_the_instrument_and_every_bar(tmp_path: Path) -> None:
    from nautilus_trader.persistence.catalog import ParquetDataCatalog

    bars = _goog()
    summary = nautilus.write_catalog(
        tmp_path / "catalog",
        [
            (Instrument(symbol="GOOG", exchange="XNAS"), bars, "1d"),
            (Instrument(symbol="BTCUSDT", asset_class="crypto", exchange="BINANCE"), bars, "1h"),
        ],
    )
    assert summary.bars == 2 * len(bars)
    catalog = ParquetDataCatalog(str(tmp_path / "catalog"))
    ids = sorted(str(i.id) for i in catalog.instruments())
    assert ids == ["BTCUSDT.BINANCE", "GOOG.XNAS"]
    stored = catalog.bars(bar_types=["GOOG.XNAS-1-DAY-LAST-EXTERNAL"])
    assert len(stored) == len(bars)
    # Nautilus stamps a bar at its close: the open time plus one day
    assert stored[0].ts_event // 1000 == bars.ts[0] + 86_400_000_000
    assert float(stored[0].close) == bars.close[0]
    assert nautilus.bar_spec("15m") == "15-MINUTE"
    assert nautilus.precision_of(np.array([1.5, 2.25])) == 2


def test_cli_runs_the_nautilus_engine_and_exports_a_catalog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from tests.backtest.test_cli import call

    uri = f"duckdb:///{tmp_path}/ml.duckdb"
    code, _, err = call(
        capsys, "--store", uri, "ingest", "synthetic", "AAPL", "-t", "1d",
        "--start", "2022-01-01", "--end", "2024-01-01",
    )  # fmt: skip
    assert code == 0, err
    args = ["--store", uri, "backtest", "run", "-s", "sma_cross", "--symbol", "AAPL", "-t", "1d"]
    code, out, err = call(capsys, *args, "-p", "fast=5", "-p", "slow=20", "--engine",
                          "nautilus", "--json")  # fmt: skip
    assert code == 0, err
    theirs = json.loads(out)
    code, out, err = call(capsys, *args, "-p", "fast=5", "-p", "slow=20", "--fill", "close",
                          "--no-save", "--json")  # fmt: skip
    assert code == 0, err
    ours = json.loads(out)
    # Nautilus keeps cash in whole cents: at most a cent of rounding per fill
    cents = 0.01 * theirs["fills"]
    assert theirs["final_equity"] == pytest.approx(ours["stats"]["final_equity"], abs=cents)
    assert [t["entry_price"] for t in theirs["trades"]] == pytest.approx(
        [t["entry_price"] for t in ours["trades"]]
    )
    code, _, err = call(capsys, *args, "--engine", "nautilus", "--commission", "5")
    assert code == 2
    assert "without costs" in err
    code, out, err = call(
        capsys, "--store", uri, "export", "--format", "nautilus", "--to",
        str(tmp_path / "cat"), "--timeframe", "1d", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["bars"] > 400
    assert (tmp_path / "cat" / "data").is_dir()
    code, _, err = call(capsys, "--store", uri, "export", "--format", "nautilus", "--to",
                        str(tmp_path / "cat2"))  # fmt: skip
    assert code == 2
    assert "needs --timeframe" in err
