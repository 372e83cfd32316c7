"""The CLI beside a running server on one DuckDB file, and against a server with --api.

Real processes throughout: ``marketlake serve`` holds the file; every other
``marketlake`` process finds it through the discovery file and runs through it.
The same commands run directly first and through the server after, and must
print the same and exit the same.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from marketlake.cli.app import cli
from marketlake.store.holder import find_server, server_file_path
from tests.api.server import free_port, running

CLI = [sys.executable, "-c", "from marketlake.cli.app import main; main()"]
CSV = "Date,Open,High,Low,Close,Volume\n2024-01-02,10,11,9,10.5,100\n2024-01-03,10.5,12,10,11,200\n"


def marketlake(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``marketlake ARGS`` as its own process in ``cwd``; (exit code, stdout, stderr)."""
    done = subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=os.environ | {"COLUMNS": "100"} | (env or {}),
    )
    return done.returncode, done.stdout, done.stderr


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store with synthetic hourly bars of AAPL and BTCUSDT (MARKETLAKE_STORE points at it)."""
    uri = f"duckdb:///{tmp_path}/lake.duckdb"
    monkeypatch.setenv("MARKETLAKE_STORE", uri)
    args = ["ingest", "synthetic", "AAPL", "BTCUSDT", "-t", "1h", "--start", "2024-03-04"]
    assert cli([*args, "--end", "2024-03-08", "--quiet"]) == 0
    return tmp_path


@pytest.fixture
def server(lake: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with running(["serve"], lake / "serve.log") as (url, process):
        yield url, process


READS = [
    ["instruments", "list"],
    ["instruments", "show", "AAPL", "--json"],
    ["bars", "AAPL", "-t", "1h", "--tail", "5"],
    ["bars", "BTCUSDT", "-t", "1h", "--format", "csv", "--limit", "3"],
    ["jobs", "list", "--json"],
    ["actions", "AAPL"],
    ["doctor", "--json"],
    ["bars", "NOPE"],
    ["bars", "AAPL", "-t", "7x"],
    ["bars", "AAPL", "--format", "xml"],
]


def test_every_read_prints_the_same_through_the_server(lake: Path) -> None:
    direct = [marketlake(lake, *args) for args in READS]
    with running(["serve"], lake / "serve.log") as (url, process):
        found = find_server(os.environ["MARKETLAKE_STORE"])
        assert found is not None
        assert (found.url, found.pid) == (url, process.pid)
        through = [marketlake(lake, *args) for args in READS]
        assert server_file_path(lake / "lake.duckdb").exists()
    assert through == direct
    assert [code for code, _, _ in direct] == [0] * 7 + [2] * 3
    assert "unknown symbol NOPE" in one_line(direct[-3][2])
    assert "unknown timeframe '7x'" in one_line(direct[-2][2])
    assert not server_file_path(lake / "lake.duckdb").exists()  # removed on exit


def test_the_discovery_file_is_private_and_its_token_works_from_loopback(
    lake: Path, server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    path = server_file_path(lake / "lake.duckdb")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    info = json.loads(path.read_text())
    assert info["pid"] == server[1].pid
    headers = {"Authorization": f"Bearer {info['token']}"}
    created = httpx.post(
        f"{info['url']}/api/v1/keys", json={"name": "t", "scopes": ["read"]}, headers=headers
    )
    assert created.status_code == 201, created.text  # admin scope
    wrong = httpx.post(
        f"{info['url']}/api/v1/keys",
        json={"name": "t", "scopes": ["read"]},
        headers={"Authorization": "Bearer x"},
    )
    assert wrong.status_code == 401


def test_writes_through_the_server_use_the_callers_files(
    lake: Path, server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    work = lake / "work"
    work.mkdir()
    (work / "xyz.csv").write_text(CSV)
    code, out, err = marketlake(work, "import-csv", "xyz.csv", "--symbol", "XYZ", "--json")
    assert code == 0, err
    assert json.loads(out)["inserted"] == 2
    code, out, err = marketlake(work, "bars", "XYZ", "-t", "1d", "--format", "csv", "-o", "out.csv")
    assert (code, out.strip()) == (0, "wrote 2 bars to out.csv"), err
    assert (work / "out.csv").read_text().count("\n") == 3
    code, out, err = marketlake(work, "aggregate", "AAPL", "--from", "1h", "--to", "1d", "--json")
    assert code == 0, err
    assert [r["timeframe"] for r in json.loads(out)] == ["1d"]
    code, out, err = marketlake(work, "validate", "AAPL", "-t", "1h", "--json")
    assert code == 0, err
    assert json.loads(out)["summary"]["series"][0]["bars"] > 0
    answer = httpx.get(f"{server[0]}/api/v1/bars/XYZ", params={"timeframe": "1d"})
    assert [b["close"] for b in answer.json()["bars"]] == [10.5, 11]
    code, _, err = marketlake(work, "import-csv", "missing.csv", "--symbol", "XYZ")
    assert code == 2
    assert "missing.csv" in one_line(err)


def test_two_clients_at_once(lake: Path, server: tuple[str, subprocess.Popen[bytes]]) -> None:
    commands = [
        [
            "ingest",
            "synthetic",
            "ETHUSDT",
            "-t",
            "1h",
            "--start",
            "2024-03-04",
            "--end",
            "2024-03-06",
        ],
        ["bars", "BTCUSDT", "-t", "1h", "--json"],
    ]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda args: marketlake(lake, *args), commands))
    assert [code for code, _, _ in results] == [0, 0], results
    assert len(json.loads(results[1][1])) == 4 * 24
    code, out, _ = marketlake(lake, "bars", "ETHUSDT", "-t", "1h", "--json")
    assert (code, len(json.loads(out))) == (0, 2 * 24)


def test_commands_that_cannot_run_through_the_server_say_so(
    lake: Path, server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    for args, expected in [
        (["migrate"], "cannot run through the server"),
        (["serve", "--port", str(free_port())], "already serves this store"),
    ]:
        code, _, err = marketlake(lake, *args)
        assert code == 2
        line = one_line(err)
        assert expected in line
        assert f"kill {server[1].pid}" in line


def test_after_sigkill_the_cli_works_directly_again(lake: Path) -> None:
    with running(["serve"], lake / "serve.log") as (_, process):
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert server_file_path(lake / "lake.duckdb").exists()  # left behind, stale
        code, out, err = marketlake(lake, "bars", "AAPL", "-t", "1h", "--json", "--tail", "2")
        assert code == 0, err
        assert len(json.loads(out)) == 2
        code, out, _ = marketlake(lake, "instruments", "list", "--json")
        assert {i["symbol"] for i in json.loads(out)} == {"AAPL", "BTCUSDT"}


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_server_stopped_by_a_signal_removes_its_discovery_file(
    lake: Path, stop: signal.Signals
) -> None:
    """`kill`/`docker stop` (SIGTERM) and Ctrl-C (SIGINT) stop the server cleanly: the
    discovery file goes, and the CLI works on the file directly."""
    discovery = server_file_path(lake / "lake.duckdb")
    with running(["serve"], lake / "serve.log") as (_, process):
        assert discovery.exists()
        process.send_signal(stop)
        code = process.wait(timeout=30)
    assert code == 128 + stop, (lake / "serve.log").read_text()  # as a shell reports it
    assert not discovery.exists(), (lake / "serve.log").read_text()
    code, out, err = marketlake(lake, "instruments", "list", "--json")
    assert code == 0, err
    assert {i["symbol"] for i in json.loads(out)} == {"AAPL", "BTCUSDT"}


def test_a_discovery_file_of_a_process_that_is_not_the_server(lake: Path) -> None:
    """A live pid (reused by another process) with nothing listening: one line, exit 2."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        url = f"http://127.0.0.1:{free_port()}"
        path = server_file_path(lake / "lake.duckdb")
        path.write_text(
            json.dumps(
                {
                    "url": url,
                    "pid": other.pid,
                    "host": os.uname().nodename,
                    "token": "mls_x",
                    "store": "",
                    "started_at": "",
                    "version": 1,
                }
            )
        )
        code, _, err = marketlake(lake, "instruments", "list")
        assert code == 2
        line = one_line(err)
        assert f"the MarketLake server at {url} (pid {other.pid}) does not answer" in line
        assert "remove the discovery file" in line
    finally:
        other.kill()
        other.wait()


def test_a_lock_holder_that_is_not_a_server_is_named_and_waited_for(lake: Path) -> None:
    hold = (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
        "time.sleep(float(sys.argv[2])); c.close()"
    )
    database = str(lake / "lake.duckdb")
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, database, "60"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        code, _, err = marketlake(lake, "instruments", "list")
        assert code == 1
        line = one_line(err)
        assert f"process {holder.pid} holds it" in line
        assert "import duckdb" in line  # its command line
        assert "--wait SECONDS" in line
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    brief = subprocess.Popen(
        [sys.executable, "-c", hold, database, "15"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert brief.stdout is not None
        assert brief.stdout.readline().strip() == "held"
        began = time.monotonic()
        code, out, err = marketlake(lake, "--wait", "60", "instruments", "list", "--json")
        assert code == 0, err
        assert f"waiting up to 60 s for process {brief.pid}" in err
        assert {i["symbol"] for i in json.loads(out)} == {"AAPL", "BTCUSDT"}
        assert time.monotonic() - began < 60
    finally:
        brief.wait()
        if brief.stdout is not None:
            brief.stdout.close()


def test_the_cli_against_a_server_with_api_and_a_key(
    lake: Path, server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url = server[0]
    code, out, err = marketlake(lake, "keys", "create", "reader", "--scope", "read", "--json")
    assert code == 0, err
    key = json.loads(out)["key"]
    elsewhere = lake / "elsewhere"  # another store: the commands must go to --api
    elsewhere.mkdir()
    env = {"MARKETLAKE_STORE": f"duckdb:///{elsewhere}/other.duckdb", "MARKETLAKE_API_KEY": key}
    direct = marketlake(lake, "bars", "AAPL", "-t", "1h", "--tail", "3")
    assert (
        marketlake(elsewhere, "--api", url, "bars", "AAPL", "-t", "1h", "--tail", "3", env=env)
        == direct
    )
    env_api = env | {"MARKETLAKE_API": url}
    code, out, _ = marketlake(elsewhere, "instruments", "list", "--json", env=env_api)
    assert {i["symbol"] for i in json.loads(out)} == {"AAPL", "BTCUSDT"}
    for args, expected in [
        (["ingest", "synthetic", "AAPL"], "needs write"),
        (
            ["bars", "AAPL", "--format", "csv", "-o", "x.csv"],
            "cannot be read or written through --api",
        ),
        (["migrate"], "does not run through --api"),
    ]:
        code, _, err = marketlake(elsewhere, *args, env=env_api)
        assert code == 2, err
        assert expected in one_line(err)
    assert not (elsewhere / "x.csv").exists()
    unreachable = env | {"MARKETLAKE_API": f"http://127.0.0.1:{free_port()}"}
    code, _, err = marketlake(elsewhere, "bars", "AAPL", env=unreachable)
    assert code == 2
    assert "does not answer" in one_line(err)
