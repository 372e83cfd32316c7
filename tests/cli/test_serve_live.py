"""``marketlake serve --stream/--schedule/--alerts``: live data beside the API on one
DuckDB file.

The live path runs real processes: the offline mirror (REST and websocket, in this
process on loopback) → ``marketlake serve --stream binance:…`` (a subprocess holding the
store) → an SSE client here, and ``marketlake bars`` (another subprocess) reading the
same DuckDB file through the server meanwhile. Every wait is bounded; the server is
stopped with SIGINT (as Ctrl-C) and must exit cleanly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from marketlake.cli.app import cli
from marketlake.tools.mirror import Mirror
from tests.api.server import free_port, running

Capsys = pytest.CaptureFixture[str]
CLI = [sys.executable, "-c", "from marketlake.cli.app import main; main()"]


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """uvicorn's server replaced: a flag check that fails to refuse cannot hang the test."""
    served: list[Any] = []

    class FakeServer:
        def __init__(self, config: Any) -> None:
            self.config = config

        def run(self, sockets: list[Any]) -> None:
            served.append(self.config)

    monkeypatch.setattr(uvicorn, "Server", FakeServer)
    return served


def one_error_line(capsys: Capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert lines[0].startswith("error: ")
    return lines[0]


BAD_RULES = "rules:\n  - {id: r1, kind: price_above, threshold: lots}\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--stream", "kraken:BTCUSDT"], "no live feed 'kraken'; live feeds: binance"),
        (["--stream", "binance:"], "no symbols; list them after the colon"),
        (["--stream", "binance: , "], "no symbols"),
        (["--stream", "BTCUSDT"], "give PROVIDER:SYMBOLS, e.g. binance:BTCUSDT,ETHUSDT"),
        (["--schedule", "missing.yml"], "--schedule missing.yml: no such file"),
        (["--stream", "binance:BTCUSDT", "--alerts", "missing.yml"], "no such file"),
        (["--stream", "binance:BTCUSDT", "--alerts", "bad_rules.yml"], "alert rule #1 'r1'"),
        (["--alerts", "rules.yml"], "--alerts needs --stream"),
        (["--schedule", "bad_schedule.yml"], "needs a non-empty 'jobs:' list"),
        (["--stream", "binance:BTCUSDT", "--workers", "2"], "--workers 2"),
    ],
)
def test_bad_live_flags_are_one_line_and_exit_2_before_serving(
    args: list[str],
    expected: str,
    capsys: Capsys,
    no_serving: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad_rules.yml").write_text(BAD_RULES)
    (tmp_path / "rules.yml").write_text("rules: []\n")
    (tmp_path / "bad_schedule.yml").write_text("jobs: []\n")
    store = f"duckdb:///{tmp_path}/lake.duckdb"
    assert cli(["--store", store, "serve", *args, "--port", str(free_port())]) == 2
    line = one_error_line(capsys)
    assert expected in line
    assert not no_serving
    assert not (tmp_path / "lake.duckdb").exists()  # refused before the store was opened


def test_serve_help_teaches_the_live_flags(capsys: Capsys) -> None:
    assert cli(["serve", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in (
        "--stream",
        "binance:BTCUSDT,ETHUSDT",
        "--schedule",
        "config/ingestion_schedule.yml",
        "--alerts",
        "MARKETLAKE_BINANCE_WS_URL",
        "one process only may open the DuckDB file",
    ):
        assert text in out, text


@pytest.fixture
def mirror() -> Iterator[dict[str, str]]:
    """The offline mirror on loopback; the settings that point MarketLake at it."""
    source = Mirror()
    rest = source.serve()
    ws = source.serve_websocket()
    try:
        yield {
            "MARKETLAKE_BINANCE_URL": rest.url,
            "MARKETLAKE_BINANCE_WS_URL": ws.url,
            "MARKETLAKE_RATE_LIMIT": "false",
        }
    finally:
        ws.close()
        rest.close()


def marketlake(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=os.environ | {"COLUMNS": "120"} | env,
    )


def sse_events(
    url: str, wanted: set[str], *, headers: dict[str, str] | None = None, timeout_s: float = 60
) -> dict[str, list[dict[str, Any]]]:
    """Read SSE events of ``url`` until one of each ``wanted`` type came (bounded)."""
    seen: dict[str, list[dict[str, Any]]] = {}
    deadline = time.monotonic() + timeout_s
    with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(10.0)) as answer:
        assert answer.status_code == 200, answer.read()
        event = ""
        for line in answer.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                seen.setdefault(event, []).append(orjson.loads(line[6:]))
                if wanted <= set(seen):
                    return seen
            if time.monotonic() > deadline:
                break
    raise AssertionError(f"only {sorted(seen)} of {sorted(wanted)} within {timeout_s} s")


@pytest.mark.slow
def test_live_on_one_machine_mirror_feed_server_sse_and_cli(
    tmp_path: Path, mirror: dict[str, str]
) -> None:
    store = f"duckdb:///{tmp_path}/lake.duckdb"
    env = {"MARKETLAKE_STORE": store, **mirror}
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "rules:\n  - {id: btc-any-price, symbol: BTCUSDT, kind: price_above, threshold: 1,"
        " message: 'BTCUSDT at {price:.2f}'}\n"
    )
    # an hour of minutes from the mirror's REST klines first (the same price path)
    done = marketlake(tmp_path, env, "ingest", "binance", "BTCUSDT", "-t", "1m", "--period", "1h")
    assert done.returncode == 0, done.stderr
    args = ["serve", "--stream", "binance:BTCUSDT,ETHUSDT", "--alerts", str(rules)]
    with running(args, tmp_path / "serve.log", env=env, timeout_s=120) as (base, process):
        live = sse_events(f"{base}/api/v1/stream/live?symbols=BTCUSDT", {"trades", "bar"})
        trade = live["trades"][0]
        assert trade["symbol"] == "BTCUSDT"
        assert trade["trades"][0]["price"] > 0
        bar = live["bar"][0]
        assert bar["symbol"] == "BTCUSDT"
        assert bar["bars"][0]["high"] >= bar["bars"][0]["low"]
        # the rule fired on the first trade; Last-Event-ID 0 replays it from the bus
        alerts = sse_events(
            f"{base}/api/v1/alerts/stream", {"alert"}, headers={"Last-Event-ID": "0"}
        )["alert"]
        assert alerts[0]["rule_id"] == "btc-any-price"
        assert alerts[0]["symbol"] == "BTCUSDT"
        assert alerts[0]["message"].startswith("BTCUSDT at ")
        ready = httpx.get(f"{base}/api/v1/ready", timeout=10).json()
        assert ready["checks"]["feed:binance"].startswith("connected")
        # another process reads the same DuckDB file: through the server that holds it
        bars = marketlake(tmp_path, env, "bars", "BTCUSDT", "-t", "1m", "--tail", "3", "--json")
        assert bars.returncode == 0, bars.stderr
        rows = orjson.loads(bars.stdout)
        assert len(rows) == 3
        assert all(r["symbol"] == "BTCUSDT" for r in rows)
        metrics = marketlake(tmp_path, env, "metrics", "--json")
        assert metrics.returncode == 0, metrics.stderr
        shown = orjson.loads(metrics.stdout)
        assert [f["state"] for f in shown["feeds"] if f["feed"] == "binance"] == ["connected"]
        assert "BTCUSDT" in {m["symbol"] for m in shown["metrics"]}
        stored = httpx.get(f"{base}/api/v1/alerts", params={"symbol": "BTCUSDT"}, timeout=10)
        assert any(a["rule_id"] == "btc-any-price" for a in stored.json())
    # Ctrl-C: uvicorn stops, then re-raises the signal (exit 130, as for any Ctrl-C)
    assert process.returncode in (0, 130), (tmp_path / "serve.log").read_text()[-2000:]
    log = (tmp_path / "serve.log").read_text()
    assert "live: binance BTCUSDT, ETHUSDT from ws://127.0.0.1:" in log
    assert "Traceback" not in log
    assert not (tmp_path / "lake.duckdb.server.json").exists()


async def test_open_streams_end_when_the_server_shuts_down() -> None:
    """Ctrl-C ends every SSE stream at once (uvicorn would otherwise wait for browsers)."""
    import asyncio

    from marketlake.api.sse import StreamSlots, frames

    async def silent() -> Any:
        await asyncio.Event().wait()
        yield None, "never", {}

    slots = StreamSlots(5)
    slot = slots.take("caller")
    body = frames(silent(), keepalive_s=60, stop=slot.closing)
    assert await anext(body) == b"retry: 2000\n\n"
    nxt = asyncio.ensure_future(anext(body))
    await asyncio.sleep(0.05)
    assert not nxt.done()
    slots.close()
    with pytest.raises(StopAsyncIteration):
        async with asyncio.timeout(5):
            await nxt


@pytest.mark.slow
def test_the_demo_ends_live_from_the_offline_mirror(tmp_path: Path) -> None:
    """`marketlake demo` (= `make run`) serves with live trades from the mirror, its
    sample rules and portfolio in force; Ctrl-C stops the server and the mirror."""
    import re
    import socket

    repo = Path(__file__).resolve().parents[2]
    store = f"duckdb:///{tmp_path}/demo.duckdb"
    log = tmp_path / "demo.log"
    with running(["--store", store, "demo", "--days", "1"], log, timeout_s=180) as (base, process):
        live = sse_events(f"{base}/api/v1/stream/live?symbols=BTCUSDT", {"trades", "bar"})
        assert live["trades"][0]["symbol"] == "BTCUSDT"
        ready = httpx.get(f"{base}/api/v1/ready", timeout=10).json()
        assert ready["checks"]["feed:binance"].startswith("connected")
        if Path.cwd() == repo:  # the shipped config/ is in force when run from the repo
            rules = httpx.get(f"{base}/api/v1/alerts/rules", timeout=10).json()
            assert "btc-fast-move" in {r["id"] for r in rules}
            held = httpx.get(f"{base}/api/v1/portfolio", timeout=10).json()
            assert {p["symbol"] for p in held["positions"]} == {"BTCUSDT", "ETHUSDT"}
        # today's minutes so far came from the mirror's REST klines: no gap before live
        latest = httpx.get(f"{base}/api/v1/bars/BTCUSDT/latest", timeout=10)
        assert latest.status_code == 200
        assert latest.json()["ts"][:10] == time.strftime("%Y-%m-%d", time.gmtime())
    text = log.read_text()
    assert process.returncode in (0, 130), text[-2000:]
    assert "Traceback" not in text
    found = re.search(r"offline Binance mirror \(ws://127\.0\.0\.1:(\d+)\)", text)
    assert found, text[-2000:]
    with socket.socket() as probe:  # the mirror child stopped with the demo
        assert probe.connect_ex(("127.0.0.1", int(found.group(1)))) != 0


@pytest.mark.slow
def test_serve_runs_the_ingestion_schedule_on_its_store(
    tmp_path: Path, mirror: dict[str, str]
) -> None:
    """`serve --schedule FILE`: the jobs run inside the server and write the store it
    serves; `marketlake scheduler` beside it is refused with a pointer to the flag."""
    store = f"duckdb:///{tmp_path}/lake.duckdb"
    env = {"MARKETLAKE_STORE": store, **mirror}
    schedule = tmp_path / "schedule.yml"
    schedule.write_text(
        "jobs:\n  - {name: eth-minutes, cron: '* * * * *', provider: binance,"
        " symbols: [ETHUSDT], timeframe: 1m, lookback: 30m}\n"
    )
    args = ["serve", "--schedule", str(schedule)]
    with running(args, tmp_path / "serve.log", env=env, timeout_s=120) as (base, process):
        refused = marketlake(tmp_path, env, "scheduler", "--config", str(schedule))
        assert refused.returncode == 2
        assert "marketlake serve --schedule FILE" in refused.stderr
        deadline = time.monotonic() + 150  # the job fires at the next whole minute
        count = 0
        while time.monotonic() < deadline and not count:
            page = httpx.get(f"{base}/api/v1/bars/ETHUSDT", params={"timeframe": "1m"}, timeout=10)
            count = page.json().get("count", 0) if page.status_code == 200 else 0
            time.sleep(1)
        assert count >= 25, (tmp_path / "serve.log").read_text()[-2000:]
        jobs = marketlake(tmp_path, env, "jobs", "list", "--json")
        assert jobs.returncode == 0, jobs.stderr
        assert any(j["status"] == "succeeded" for j in orjson.loads(jobs.stdout))
    assert process.returncode in (0, 130)
    assert "scheduler: 1 ingest jobs from" in (tmp_path / "serve.log").read_text()
