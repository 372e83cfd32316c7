"""The ``marketlake`` command: every command of the embedded core, JSON output, exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from marketlake.cli.app import cli
from marketlake.cli.demo import demo_range
from marketlake.providers.synthetic import generate_bars
from marketlake.store import open_store

Capsys = pytest.CaptureFixture[str]
INGEST = [
    "ingest",
    "synthetic",
    "AAPL",
    "BTCUSDT",
    "-t",
    "1h",
    "--start",
    "2024-03-04",
    "--end",
    "2024-03-06",
]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.fixture
def uri(tmp_path: Path) -> str:
    """An empty embedded store (read commands refuse a path that does not exist)."""
    from marketlake.store import open_store

    made = f"duckdb:///{tmp_path}/cli.duckdb"
    open_store(made).close()
    return made


def run(capsys: Capsys, uri: str, *args: str) -> tuple[int, str, str]:
    code = cli(["--store", uri, *args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: Capsys, uri: str, *args: str) -> Any:
    code, out, err = run(capsys, uri, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def one_line_error(err: str) -> str:
    """The error output must be exactly one line without a traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- top level --------------------------------------------------------------------------


def test_version_and_help(capsys: Capsys) -> None:
    from marketlake import __version__

    assert cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"marketlake {__version__}"
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    for command in (
        "import-csv",
        "ingest",
        "bars",
        "instruments",
        "jobs",
        "doctor",
        "demo",
        "run-simple",
    ):
        assert command in out


def test_an_unknown_command_is_a_usage_error(capsys: Capsys) -> None:
    assert cli(["frobnicate"]) == 2
    assert "No such command 'frobnicate'" in one_line_error(capsys.readouterr().err)


def test_an_unknown_store_scheme_is_named(capsys: Capsys) -> None:
    code, _, err = run(capsys, "mongodb://x", "instruments", "list")
    assert code == 2
    assert "unknown store URI 'mongodb://x'" in one_line_error(err)


def test_a_store_from_a_newer_version_is_refused_clearly(capsys: Capsys, uri: str) -> None:
    with open_store(uri) as store:
        store.execute("UPDATE marketlake_meta SET value = '999' WHERE key = 'schema_version'")
    code, _, err = run(capsys, uri, "instruments", "list")
    assert code == 1
    assert "schema version 999, newer than this MarketLake's" in one_line_error(err)


def test_debug_shows_the_traceback(uri: str) -> None:
    command = [sys.executable, "-c", "from marketlake.cli.app import main; main()", "--store", uri]
    plain = subprocess.run(
        [*command, "instruments", "show", "NOPE"], capture_output=True, text=True, check=False
    )
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [
        "error: unknown symbol NOPE; list known ones with `marketlake instruments list`"
    ]
    debug = subprocess.run(
        [*command, "--debug", "instruments", "show", "NOPE"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert "marketlake.errors.NotFoundError: unknown symbol NOPE" in debug.stderr


# -- instruments ----------------------------------------------------------------------------


def test_instruments_add_list_show_rm(capsys: Capsys, uri: str) -> None:
    code, out, _ = run(
        capsys, uri, "instruments", "add", "msft", "--name", "Microsoft", "--exchange", "XNAS"
    )
    assert (code, out.strip()) == (0, "added MSFT")
    assert (
        run(
            capsys,
            uri,
            "instruments",
            "add",
            "ETHUSDT",
            "--asset-class",
            "crypto",
            "--timezone",
            "UTC",
            "--currency",
            "USDT",
        )[0]
        == 0
    )
    listed = run_json(capsys, uri, "instruments", "list")
    assert [(i["symbol"], i["asset_class"], i["currency"]) for i in listed] == [
        ("ETHUSDT", "crypto", "USDT"),
        ("MSFT", "stock", "USD"),
    ]
    code, out, _ = run(capsys, uri, "instruments", "list")
    assert "Microsoft" in out
    shown = run_json(capsys, uri, "instruments", "show", "msft")
    assert (shown["name"], shown["exchange"], shown["auto_registered"], shown["bars"]) == (
        "Microsoft",
        "XNAS",
        False,
        [],
    )
    assert run(capsys, uri, "instruments", "show", "MSFT")[1].count("XNAS") == 1
    code, out, _ = run(capsys, uri, "instruments", "rm", "msft")
    assert (code, out.strip()) == (0, "removed MSFT")
    assert [i["symbol"] for i in run_json(capsys, uri, "instruments", "list")] == ["ETHUSDT"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["add", "AAPL", "--asset-class", "bond"], 2, "--asset-class"),
        (["add", "AAPL", "--timezone", "Mars/Base"], 2, "unknown IANA timezone 'Mars/Base'"),
        (["add", "AA PL"], 2, "symbol 'AA PL'"),
        (["show", "NOPE"], 2, "unknown symbol NOPE"),
        (["rm", "NOPE"], 2, "unknown symbol NOPE"),
    ],
)
def test_instrument_errors(
    capsys: Capsys, uri: str, args: list[str], code: int, message: str
) -> None:
    got, _, err = run(capsys, uri, "instruments", *args)
    assert got == code
    assert message in one_line_error(err)


def test_adding_an_instrument_twice_is_a_failure(capsys: Capsys, uri: str) -> None:
    run(capsys, uri, "instruments", "add", "AAPL")
    code, _, err = run(capsys, uri, "instruments", "add", "AAPL")
    assert code == 1
    assert "AAPL exists already" in one_line_error(err)


# -- ingest and bars -------------------------------------------------------------------------


def test_ingest_registers_symbols_and_is_idempotent(capsys: Capsys, uri: str) -> None:
    first = run_json(capsys, uri, *INGEST)
    expected = {
        s: generate_bars(s, "1h", utc(2024, 3, 4), utc(2024, 3, 6)).num_rows
        for s in ("AAPL", "BTCUSDT")
    }
    assert first["status"] == "succeeded"
    assert {s["symbol"]: (s["fetched"], s["inserted"]) for s in first["symbols"]} == {
        s: (n, n) for s, n in expected.items()
    }
    again = run_json(capsys, uri, *INGEST)
    assert {s["symbol"]: (s["inserted"], s["duplicates"]) for s in again["symbols"]} == {
        s: (0, n) for s, n in expected.items()
    }
    shown = run_json(capsys, uri, "instruments", "show", "BTCUSDT")
    assert (shown["auto_registered"], shown["asset_class"], shown["timezone"]) == (
        True,
        "crypto",
        "UTC",
    )
    hourly = {row["timeframe"]: row["bars"] for row in shown["bars"]}["1h"]
    assert hourly == expected["BTCUSDT"]
    _, out, _ = run(capsys, uri, "instruments", "show", "BTCUSDT")
    assert "registered automatically" in out


def test_ingest_prints_a_summary_table(capsys: Capsys, uri: str) -> None:
    code, out, _ = run(capsys, uri, *INGEST)
    assert code == 0
    assert "succeeded" in out
    assert "BTCUSDT" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "nowhere", "AAPL", "--start", "2024-03-04"], "unknown provider 'nowhere'"),
        (
            ["ingest", "synthetic", "AAPL", "-t", "3y", "--start", "2024-03-04"],
            "unknown timeframe '3y'",
        ),
        (
            ["ingest", "synthetic", "AAPL", "--start", "2024-03-04", "--period", "7d"],
            "either --start/--end or --period",
        ),
        (
            ["ingest", "synthetic", "AAPL", "--start", "2024-03-05", "--end", "2024-03-04"],
            "must be before --end",
        ),
        (["ingest", "synthetic", "AAPL", "--start", "March"], "start 'March' is not an ISO"),
        (["ingest", "synthetic", "AAPL"], "give --start"),
    ],
)
def test_bad_ingest_arguments_exit_2(
    capsys: Capsys, uri: str, args: list[str], message: str
) -> None:
    code, _, err = run(capsys, uri, *args)
    assert code == 2
    assert message in one_line_error(err)


@pytest.fixture
def loaded(capsys: Capsys, uri: str) -> str:
    assert run(capsys, uri, *INGEST)[0] == 0
    return uri


def test_bars_as_csv_json_and_parquet_match_the_store(
    capsys: Capsys, loaded: str, tmp_path: Path
) -> None:
    with open_store(loaded) as store:
        expected = store.read_bars("AAPL", "1h", utc(2024, 3, 4), utc(2024, 3, 5)).table
    span = ["--start", "2024-03-04", "--end", "2024-03-05"]
    code, out, _ = run(capsys, loaded, "bars", "AAPL", "-t", "1h", *span, "--format", "csv")
    assert code == 0
    assert (
        pacsv.read_csv(io.BytesIO(out.encode())).column("close").to_pylist()
        == expected.column("close").to_pylist()
    )
    rows = run_json(capsys, loaded, "bars", "aapl", "-t", "1h", *span)
    assert [r["close"] for r in rows] == expected.column("close").to_pylist()
    assert rows[0]["ts"] == "2024-03-04T14:00:00Z"
    target = tmp_path / "aapl.parquet"
    code, out, _ = run(
        capsys, loaded, "bars", "AAPL", "-t", "1h", *span, "-f", "parquet", "-o", str(target)
    )
    assert code == 0
    assert f"wrote {expected.num_rows} bars" in out
    assert pq.read_table(target).equals(expected)


def test_bars_limit_tail_and_table(capsys: Capsys, loaded: str) -> None:
    rows = run_json(capsys, loaded, "bars", "BTCUSDT", "-t", "1h", "--limit", "3")
    assert [r["ts"] for r in rows] == [
        "2024-03-04T00:00:00Z",
        "2024-03-04T01:00:00Z",
        "2024-03-04T02:00:00Z",
    ]
    rows = run_json(capsys, loaded, "bars", "BTCUSDT", "-t", "1h", "--tail", "2")
    assert [r["ts"] for r in rows] == ["2024-03-05T22:00:00Z", "2024-03-05T23:00:00Z"]
    code, out, _ = run(capsys, loaded, "bars", "BTCUSDT", "-t", "1h")
    assert code == 0
    assert "BTCUSDT 1h" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["bars", "NOPE"], 2, "unknown symbol NOPE"),
        (["bars", "AAPL", "-f", "parquet"], 2, "--format parquet needs --output FILE"),
        (["bars", "AAPL", "--limit", "0"], 2, "limit 0 must be between"),
        (["bars", "AAPL", "-f", "xml"], 2, "Invalid value for '--format'"),
    ],
)
def test_bars_errors(capsys: Capsys, loaded: str, args: list[str], code: int, message: str) -> None:
    got, _, err = run(capsys, loaded, *args)
    assert got == code
    assert message in one_line_error(err)


# -- jobs and doctor ---------------------------------------------------------------------


def test_jobs_list_and_show(capsys: Capsys, loaded: str) -> None:
    jobs = run_json(capsys, loaded, "jobs", "list")
    assert [(j["kind"], j["status"]) for j in jobs] == [("ingest", "succeeded")]
    assert jobs[0]["rows"] == sum(
        generate_bars(s, "1h", utc(2024, 3, 4), utc(2024, 3, 6)).num_rows
        for s in ("AAPL", "BTCUSDT")
    )
    job = run_json(capsys, loaded, "jobs", "show", jobs[0]["id"])
    assert job["params"]["symbols"] == ["AAPL", "BTCUSDT"]
    assert [s["symbol"] for s in job["summary"]["symbols"]] == ["AAPL", "BTCUSDT"]
    code, out, _ = run(capsys, loaded, "jobs", "show", jobs[0]["id"])
    assert code == 0
    assert "succeeded" in out
    assert run(capsys, loaded, "jobs", "list")[0] == 0
    code, _, err = run(capsys, loaded, "jobs", "show", "nope")
    assert code == 2
    assert "unknown job nope" in one_line_error(err)


def test_doctor_reports_version_store_and_schema(capsys: Capsys, uri: str) -> None:
    from marketlake.store.tables import SCHEMA_VERSION

    report = run_json(capsys, uri, "doctor")
    checks = {c["check"]: (c["status"], c["detail"]) for c in report["checks"]}
    assert report["ok"] is True
    assert checks["store"] == ("ok", uri)
    assert checks["schema version"] == ("ok", str(SCHEMA_VERSION))
    assert checks["bus"][0] == "ok"


def test_doctor_fails_when_the_bus_is_unreachable(
    capsys: Capsys, uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARKETLAKE_BUS", "redis://127.0.0.1:1/0")
    code, out, _ = run(capsys, uri, "doctor", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert [c["status"] for c in report["checks"] if c["check"] == "bus"] == ["FAIL"]


# -- demo and run-simple ------------------------------------------------------------------


def test_demo_loads_stocks_and_crypto(capsys: Capsys, uri: str) -> None:
    summary = run_json(capsys, uri, "demo", "--days", "2", "--no-serve")
    start, end = demo_range(2)
    assert summary["status"] == "succeeded"
    counts = {row["symbol"]: row["bars"] for row in summary["bars"] if row["timeframe"] == "1m"}
    assert set(counts) == {"AAPL", "MSFT", "SPY", "BTCUSDT", "ETHUSDT"}
    for symbol, bars in counts.items():
        assert bars == generate_bars(symbol, "1m", start, end).num_rows
    assert counts["BTCUSDT"] == 2 * 1440
    code, out, err = run(capsys, uri, "demo", "--days", "2", "--no-serve")
    assert code == 0
    assert "Stored bars" in out
    assert "5/5 sample backtest: SMA 10/30 on BTCUSDT 1h" in out, err  # not skipped


def test_run_simple_is_the_engine_on_synthetic_hourly_bars(capsys: Capsys) -> None:
    """run-simple is ``run_backtest`` of sma_cross on synthetic hourly bars, stored nowhere."""
    from marketlake.backtest import run_backtest

    code = cli(
        ["run-simple", "--symbol", "MSFT", "--fast", "5", "--slow", "20", "--days", "60", "--json"]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    start, end = demo_range(60)
    close = generate_bars("MSFT", "1h", start, end).to_pandas()["close"]
    assert data["stats"]["bars"] == len(close)
    assert data["stats"]["buy_hold_return_pct"] == pytest.approx(
        (close.iloc[-1] / close.iloc[0] - 1) * 100
    )
    same = run_backtest(
        None,
        "sma_cross",
        {"fast": 5, "slow": 20},
        symbols=["MSFT"],
        timeframe="1h",
        start=start,
        end=end,
        synthetic=True,
    )
    assert data["stats"] == same.stats
    assert len(data["trades"]) == same.trades.num_rows
    assert cli(["run-simple", "--days", "30"]) == 0
    assert "sma_cross(fast=20, slow=50) on AAPL 1h" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fast", "50", "--slow", "20"], "fast (50) must be smaller than slow (20)"),
        (["--fast", "0"], "fast must be at least 1"),
        (["--days", "1"], "needs at least 51 bars"),
    ],
)
def test_run_simple_refuses_bad_windows(capsys: Capsys, args: list[str], message: str) -> None:
    """run-simple goes through the backtest engine, which checks the strategy's parameters."""
    assert cli(["run-simple", *args]) == 2
    assert message in one_line_error(capsys.readouterr().err)


# -- the bars table ----------------------------------------------------------------------

BAR_ROWS = [
    {
        "ts": datetime(2018, 12, 31, tzinfo=UTC),
        "open": 61130.99,
        "high": 61200.5,
        "low": 61000.01,
        "close": 61130.99,
        "volume": 32997909.0,
        "trades": 123456,
        "vwap": 61111.123456789,
        "source": "binance",
    }
]
BAR_COLUMNS = ("ts", "open", "high", "low", "close", "volume", "trades", "vwap", "source")


def render(monkeypatch: pytest.MonkeyPatch, *, terminal: bool) -> str:
    import io

    from rich.console import Console

    from marketlake.cli import output

    sink = io.StringIO()
    monkeypatch.setattr(
        output, "console", Console(file=sink, width=80, force_terminal=terminal, color_system=None)
    )
    output.show_table(
        BAR_ROWS,
        BAR_COLUMNS,
        numeric=BAR_COLUMNS[1:-1],
        key=("ts", "open", "high", "low", "close"),
        optional=("source", "vwap", "trades", "volume"),
    )
    return sink.getvalue()


def test_an_80_column_terminal_keeps_time_and_prices_whole_and_names_what_it_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = render(monkeypatch, terminal=True)
    assert "2018-12-31T00:00:00Z" in out  # was cut to 2018-…
    assert "61,130.99" in out  # was rounded to 61,131
    assert "61,000.01" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "left out to fit 80 columns: source, vwap" in out
    assert "binance" not in out


def test_a_pipe_gets_every_column_uncut(monkeypatch: pytest.MonkeyPatch) -> None:
    out = render(monkeypatch, terminal=False)
    for text in ("2018-12-31T00:00:00Z", "61,130.99", "32,997,909.0", "123,456", "binance"):
        assert text in out
    assert "61,111.123456789" in out
    assert "left out" not in out
