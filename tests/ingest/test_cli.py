"""`marketlake ingest` end to end: real HTTP to a local mirror, real subprocesses for SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest

from marketlake.cli.app import cli
from marketlake.store import open_store
from marketlake.tools.mirror import Mirror, MirrorServer, UnknownSymbol, synthetic_source


def source(symbol: str, timeframe: str, start: datetime, end: datetime) -> pa.Table:
    """The synthetic market, except that symbols starting with NOPE do not exist."""
    if symbol.startswith("NOPE"):
        raise UnknownSymbol(symbol)
    return synthetic_source(symbol, timeframe, start, end)


@pytest.fixture
def mirror() -> Iterator[tuple[Mirror, MirrorServer]]:
    mirror = Mirror(source)
    server = mirror.serve()
    yield mirror, server
    server.close()


@pytest.fixture
def env(
    mirror: tuple[Mirror, MirrorServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    url = mirror[1].url
    values = {
        "MARKETLAKE_BINANCE_URL": url,
        "MARKETLAKE_YAHOO_URL": url,
        "MARKETLAKE_ALPACA_URL": url,
        "MARKETLAKE_STORE": f"duckdb:///{tmp_path}/m.duckdb",
        "MARKETLAKE_INGEST_BATCH_ROWS": "1000",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


RANGE = ["--start", "2024-03-04", "--end", "2024-03-05"]


def test_ingest_json_summary_counts_every_symbol(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(["ingest", "binance", "BTCUSDT", "ETHUSDT", "-t", "1h", *RANGE, "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "succeeded"
    assert [(s["symbol"], s["fetched"], s["inserted"], s["error"]) for s in out["symbols"]] == [
        ("BTCUSDT", 24, 24, None),
        ("ETHUSDT", 24, 24, None),
    ]


def test_a_failing_symbol_exits_1_and_names_it(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(["ingest", "binance", "NOPEUSDT", "BTCUSDT", "-t", "1h", *RANGE])
    captured = capsys.readouterr()
    assert code == 1
    assert "1 of 2 symbols failed: NOPEUSDT" in captured.err
    assert "partial" in captured.out
    assert "NOPEUSDT: no such symbol at binance: NOPEUSDT (Invalid symbol.)" in captured.out


def test_quiet_prints_nothing_on_success(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["ingest", "binance", "BTCUSDT", "-t", "1h", *RANGE, "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_yahoo_ingest_reads_back_as_trading_dates(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli(
            [
                "ingest",
                "yahoo",
                "AAPL",
                "-t",
                "1d",
                "--start",
                "2024-03-04",
                "--end",
                "2024-03-09",
                "-q",
            ]
        )
        == 0
    )
    assert cli(["bars", "AAPL", "-t", "1d", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["ts"] for r in rows] == [f"2024-03-0{d}T00:00:00Z" for d in range(4, 9)]


def test_the_recorded_job_shows_per_symbol_counts(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["ingest", "binance", "BTCUSDT", "-t", "1h", *RANGE, "--json"]) == 0
    job_id = json.loads(capsys.readouterr().out)["job_id"]
    assert cli(["jobs", "show", job_id, "--json"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["status"] == "succeeded"
    assert job["params"]["concurrency"] == 4
    [symbol] = job["summary"]["symbols"]
    assert (symbol["symbol"], symbol["fetched"], symbol["inserted"]) == ("BTCUSDT", 24, 24)


def test_progress_bars_show_on_a_terminal(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("marketlake.cli.data.stderr_isatty", lambda: True)
    assert cli(["ingest", "binance", "BTCUSDT", "ETHUSDT", "-t", "1h", *RANGE]) == 0
    progress = capsys.readouterr().err
    assert "BTCUSDT" in progress
    assert "24 bars" in progress


def test_concurrency_zero_is_bad_usage(env: dict[str, str]) -> None:
    assert cli(["ingest", "binance", "BTCUSDT", *RANGE, "--concurrency", "0"]) == 2


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "marketlake", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen[bytes]) -> int:
    _, err = process.communicate(timeout=180)
    assert process.returncode in (0, -signal.SIGKILL), err.decode()
    return process.returncode


def stored(store_uri: str) -> pa.Table:
    with open_store(store_uri) as store:
        return store.query("SELECT * FROM bars ORDER BY symbol, timeframe, ts")


@pytest.mark.slow
def test_a_job_killed_with_sigkill_and_resumed_ends_with_the_rows_of_an_uninterrupted_run(
    mirror: tuple[Mirror, MirrorServer],
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL part-way, then `--resume`: the same rows as one clean run, with fewer requests."""
    served = mirror[0]
    args = [
        "ingest",
        "binance",
        "BTCUSDT",
        "ETHUSDT",
        "SOLUSDT",
        "-t",
        "1m",
        "--start",
        "2024-03-04",
        "--end",
        "2024-03-08",
        "--concurrency",
        "2",
        "--quiet",
    ]
    clean_store = f"duckdb:///{tmp_path}/clean.duckdb"
    monkeypatch.setenv("MARKETLAKE_STORE", clean_store)
    assert cli(args) == 0
    full_requests = served.requests

    killed = {**env, "MARKETLAKE_STORE": f"duckdb:///{tmp_path}/killed.duckdb"}
    served.delay_s = 0.2
    victim = start(args, killed)
    # killed once bars are committed (the write-ahead log holds more than a page of them),
    # while the requests are still going on
    wal = tmp_path / "killed.duckdb.wal"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (wal.exists() and wal.stat().st_size > 64_000):
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert finish(victim) == -signal.SIGKILL
    assert served.requests - full_requests < full_requests
    partial = stored(killed["MARKETLAKE_STORE"]).num_rows
    assert 0 < partial < 3 * 4 * 1440

    served.delay_s = 0.0
    before = served.requests
    assert finish(start([*args, "--resume"], killed)) == 0
    assert served.requests - before < full_requests
    assert stored(killed["MARKETLAKE_STORE"]).equals(stored(clean_store))


def test_a_range_in_the_future_is_bad_input_and_stores_nothing(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["ingest", "synthetic", "AAPL", "-t", "1d", "--start", "2099-01-01"]
    assert cli([*args, "--end", "2099-02-01"]) == 2
    err = capsys.readouterr().err
    assert "start 2099-01-01T00:00:00+00:00 is in the future" in err
    assert "Traceback" not in err
    assert stored(env["MARKETLAKE_STORE"]).num_rows == 0


def test_ingest_and_repair_stop_at_now_and_repair_closes_its_client(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, timedelta

    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    first, later = hour - timedelta(hours=48), hour - timedelta(hours=45)
    iso = "%Y-%m-%dT%H:%M:%SZ"
    ingest = ["ingest", "binance", "BTCUSDT", "-t", "1h", "--start"]
    assert cli([*ingest, f"{first:{iso}}", "--end", f"{first + timedelta(hours=2):{iso}}"]) == 0
    assert cli([*ingest, f"{later:{iso}}", "--end", "2099-01-01"]) == 0  # a hole before it

    def hourly() -> list[datetime]:
        table = stored(env["MARKETLAKE_STORE"])
        return [r["ts"] for r in table.to_pylist() if r["timeframe"] == "1h"]

    times = hourly()
    assert max(times) == hour  # the bar forming now at most, none after it
    assert len(times) == 2 + 46
    process = start(["repair", "BTCUSDT", "-t", "1h", "--end", "2099-01-01"], env)
    _, err = process.communicate(timeout=180)
    assert process.returncode == 0, err.decode()
    assert b"Unclosed client session" not in err
    after = hourly()
    assert after == [first + timedelta(hours=h) for h in range(49)]


def test_a_roll_up_keeps_the_daily_bars_another_provider_delivered_and_says_so(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    week = ["--start", "2024-03-04", "--end", "2024-03-09"]
    monkeypatch.setenv("MARKETLAKE_ALPACA_KEY_ID", "test-key")
    monkeypatch.setenv("MARKETLAKE_ALPACA_SECRET_KEY", "test-secret")
    assert cli(["ingest", "yahoo", "AAPL", "-t", "1d", *week]) == 0
    capsys.readouterr()
    assert cli(["ingest", "alpaca", "AAPL", "-t", "5m", *week]) == 0
    out = capsys.readouterr().out
    assert "AAPL: kept 5 stored 1d bars from yahoo: not replaced by roll-ups of alpaca" in out
    daily = [r for r in stored(env["MARKETLAKE_STORE"]).to_pylist() if r["timeframe"] == "1d"]
    assert [r["source"] for r in daily] == ["yahoo"] * 5
    assert cli(["ingest", "yahoo", "AAPL", "-t", "1d", *week, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["symbols"][0]
    assert (again["conflicts"], again["duplicates"]) == (0, 5)
    monkeypatch.setenv("MARKETLAKE_ROLLUP_REPLACE_SOURCES", "true")
    assert cli(["aggregate", "AAPL", "--from", "5m", "--to", "1d"]) == 0
    assert "AAPL: replaced 5 stored 1d bars from yahoo" in capsys.readouterr().out
    daily = [r for r in stored(env["MARKETLAKE_STORE"]).to_pylist() if r["timeframe"] == "1d"]
    assert [r["source"] for r in daily] == ["alpaca"] * 5
    assert cli(["ingest", "yahoo", "AAPL", "-t", "1d", *week]) == 0
    out = capsys.readouterr().out
    assert "pass --refresh to overwrite them" in out


@pytest.mark.parametrize(
    ("provider", "symbol", "timeframe", "tz"),
    [
        ("binance", "BTCUSDT", "1h", None),
        ("yahoo", "AAPL", "1d", "America/New_York"),
        ("alpaca", "MSFT", "5m", None),
    ],
)
def test_a_provider_round_trip_through_csv_gives_identical_bars(
    env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
    symbol: str,
    timeframe: str,
    tz: str | None,
) -> None:
    """mirror -> ingest -> bars -f csv -> import-csv into a fresh store -> the same bars."""
    monkeypatch.setenv("MARKETLAKE_ALPACA_KEY_ID", "test-key")
    monkeypatch.setenv("MARKETLAKE_ALPACA_SECRET_KEY", "test-secret")
    span = ["--start", "2024-03-01", "--end", "2024-03-09"]
    assert cli(["ingest", provider, symbol, "-t", timeframe, *span, "-q"]) == 0
    out = tmp_path / "export.csv"
    assert cli(["bars", symbol, "-t", timeframe, "-f", "csv", "-o", str(out)]) == 0
    header, first = out.read_text().splitlines()[:2]
    assert header == "symbol,timeframe,ts,open,high,low,close,volume,trades,vwap,source"
    assert first.startswith(f"{symbol},{timeframe},2024-03-0")
    assert first.split(",")[2].endswith(":00Z")  # the API's time format
    capsys.readouterr()
    fresh = f"duckdb:///{tmp_path}/fresh.duckdb"
    args = ["--store", fresh, "import-csv", str(out), "-s", symbol, "-t", timeframe, "--json"]
    assert cli([*args, *(["--tz", tz] if tz else [])]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["rejected"], summary["skipped"]) == (0, [])
    with open_store(env["MARKETLAKE_STORE"]) as original, open_store(fresh) as copy:
        before = original.read_bars(symbol, timeframe).table.drop_columns(["source"])
        after = copy.read_bars(symbol, timeframe).table.drop_columns(["source"])
    assert before.num_rows > 0
    assert after.equals(before)


def test_bars_defaults_to_1m_like_the_api_and_names_the_stored_timeframes(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["ingest", "binance", "BTCUSDT", "-t", "1h", *RANGE, "-q"]) == 0
    capsys.readouterr()
    assert cli(["bars", "BTCUSDT", "-f", "csv"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1:] == []
    assert "no 1m bars of BTCUSDT; stored timeframes: 1d, 1h" in err
