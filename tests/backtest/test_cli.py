"""``marketlake backtest …`` and ``marketlake run-simple``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from marketlake.cli.app import cli
from marketlake.store import open_store
from tests.conftest import bars_for

SYNTHETIC = ["--synthetic", "--start", "2024-01-01", "--end", "2024-03-01", "-t", "1h"]


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    """A file store holding AAPL 1m bars of 2024-03-04 .. 2024-03-08."""
    uri = f"duckdb:///{tmp_path / 'ml.duckdb'}"
    with open_store(uri) as store:
        store.ensure_instruments(["AAPL"])
        store.write_bars(bars_for("AAPL", "1m", "2024-03-04", "2024-03-09"))
    return uri


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_prints_the_statistics_table_and_stores_the_result(
    store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = call(
        capsys,
        "--store",
        store_uri,
        "backtest",
        "run",
        "-s",
        "sma_cross",
        "--symbol",
        "AAPL",
        "-t",
        "15m",
        "--start",
        "2024-03-04",
        "--end",
        "2024-03-09",
        "-p",
        "fast=5",
        "-p",
        "slow=20",
        "--commission",
        "5",
    )
    assert code == 0
    assert "sma_cross(fast=5, slow=20) on AAPL 15m" in out
    for label in ("Sharpe ratio", "Max drawdown duration (days)", "Buy & hold return (%)"):
        assert label in out
    backtest_id = out.split("stored as backtest ")[1].split()[0]
    code, shown, _ = call(capsys, "--store", store_uri, "backtest", "show", backtest_id)
    assert code == 0
    assert "Sharpe ratio" in shown
    assert backtest_id in shown
    code, listed, _ = call(capsys, "--store", store_uri, "backtest", "list", "--json")
    assert [r["id"] for r in json.loads(listed)] == [backtest_id]


def test_run_json_has_statistics_and_every_trade(
    store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = call(
        capsys,
        "--store",
        store_uri,
        "backtest",
        "run",
        "-s",
        "bollinger_breakout",
        "--symbol",
        "AAPL",
        "-t",
        "5m",
        "--json",
        "--allow-short",
        "--stop-loss",
        "0.2",
        "--fill",
        "close",
        "--sizing",
        "fraction",
        "--size",
        "0.5",
        "--fractional",
    )
    assert code == 0
    data: dict[str, Any] = json.loads(out)
    assert (
        data["config"]
        | {
            "fill": "close",
            "allow_short": True,
            "sizing": "fraction",
            "size": 0.5,
            "stop_loss_pct": 0.2,
        }
        == data["config"]
    )
    assert len(data["trades"]) == data["stats"]["trades"] + data["stats"]["open_trades"] > 5
    assert {t["side"] for t in data["trades"]} == {"long", "short"}
    assert "stop_loss" in {t["exit_reason"] for t in data["trades"]}
    assert data["stats"]["bars"] == 5 * 78


def test_run_writes_an_offline_html_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "r.html"
    code, _, err = call(
        capsys,
        "--store",
        f"duckdb:///{tmp_path / 'x.duckdb'}",
        "backtest",
        "run",
        "-s",
        "bollinger_breakout",
        "--symbol",
        "MSFT",
        *SYNTHETIC,
        "--report",
        str(report),
        "--no-save",
    )
    assert code == 0
    assert f"report written to {report}" in err.replace("\n", "")
    text = report.read_text()
    assert "<svg " in text
    assert "https://" not in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-s", "sma_cross", "-p", "fats=3"],
            "unknown parameter 'fats' for strategy sma_cross; "
            "valid parameters: fast (int, default 10)",
        ),
        (["-s", "sma_cross", "-p", "fast"], "--param 'fast': write NAME=VALUE"),
        (["-s", "sma_cross", "-p", "fast=40", "-p", "slow=20"], "fast (40) must be smaller"),
        (["-s", "nope"], "unknown strategy 'nope'"),
        (["-s", "buy_and_hold", "--cash", "-5"], "cash must be positive"),
    ],
)
def test_bad_input_exits_2_with_one_line_saying_what_to_fix(
    args: list[str], message: str, store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = call(
        capsys, "--store", store_uri, "backtest", "run", "--symbol", "AAPL", *SYNTHETIC, *args
    )
    assert code == 2
    assert message in " ".join(err.split())


def test_synthetic_data_needs_a_range(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = call(
        capsys, "backtest", "run", "-s", "buy_and_hold", "--symbol", "AAPL", "--synthetic"
    )
    assert code == 2
    assert "--synthetic needs --start" in err


def test_missing_bars_exit_2_with_what_to_ingest(
    store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = call(
        capsys, "--store", store_uri, "backtest", "run", "-s", "buy_and_hold", "--symbol", "MSFT"
    )
    assert code == 2  # nothing to backtest is bad input (NotFoundError), as for `bars`
    assert "marketlake ingest synthetic MSFT" in " ".join(err.split())


def test_sweep_ranks_the_grid_saves_it_and_writes_csv(
    store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "grid.csv"
    code, out, _ = call(
        capsys,
        "--store",
        store_uri,
        "backtest",
        "sweep",
        "-s",
        "sma_cross",
        "--symbol",
        "AAPL",
        "-t",
        "5m",
        "-p",
        "fast=5:15:5",
        "-p",
        "slow=10,30",
        "--jobs",
        "1",
        "--sort",
        "total_return_pct",
        "--json",
        "-o",
        str(output),
    )
    assert code == 0
    data = json.loads(out)
    returns = [r["total_return_pct"] for r in data["rows"]]
    assert returns == sorted(returns, reverse=True)
    assert len(data["rows"]) == 4
    assert data["skipped"] == 2
    with output.open() as f:
        assert len(list(csv.DictReader(f))) == 4
    code, shown, _ = call(capsys, "--store", store_uri, "backtest", "show", data["id"])
    assert code == 0
    assert "Top 4 of 4 by total_return_pct" in shown


def test_sweep_table_and_bad_sort(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(
        capsys,
        "backtest",
        "sweep",
        "-s",
        "rsi_reversion",
        "--symbol",
        "AAPL",
        *SYNTHETIC,
        "-p",
        "period=7,14",
        "--jobs",
        "1",
        "--no-save",
    )
    assert code == 0
    assert "Top 2 of 2 by sharpe" in out
    code, _, err = call(
        capsys,
        "backtest",
        "sweep",
        "-s",
        "rsi_reversion",
        "--symbol",
        "AAPL",
        *SYNTHETIC,
        "-p",
        "period=7,14",
        "--sort",
        "sharp",
    )
    assert code == 2
    assert "cannot sort by 'sharp'" in err


def test_sweep_output_needs_a_known_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = call(
        capsys,
        "backtest",
        "sweep",
        "-s",
        "rsi_reversion",
        "--symbol",
        "AAPL",
        *SYNTHETIC,
        "-p",
        "period=7",
        "--jobs",
        "1",
        "--no-save",
        "-o",
        str(tmp_path / "x.xlsx"),
    )
    assert code == 2
    assert "use a .csv, .json or .parquet file" in err


def test_strategies_lists_every_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    _code, out, _ = call(capsys, "backtest", "strategies", "--json")
    rows = json.loads(out)
    assert {
        "strategy": "sma_cross",
        "parameter": "slow",
        "type": "int",
        "default": 30,
        "description": "bars in the slow moving average",
    } in rows
    assert any(r["strategy"] == "buy_and_hold" for r in rows)


def test_run_simple_uses_the_engine_on_synthetic_data(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "run-simple", "--days", "60", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["strategy"] == "sma_cross"
    assert data["params"] == {"fast": 20, "slow": 50}
    assert data["id"] is None
    assert data["timeframe"] == "1h"
    code, _, err = call(capsys, "run-simple", "--fast", "50", "--slow", "20")
    assert code == 2
    assert "fast (50) must be smaller than slow (20)" in err
