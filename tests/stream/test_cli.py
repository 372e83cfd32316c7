"""The live commands: stream, worker, replay and metrics."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from marketlake.cli.app import cli
from marketlake.store import open_store
from marketlake.stream.bus import shard_of
from marketlake.stream.bus.redis import RedisBus
from marketlake.stream.events import RAW_TOPIC
from tests.conftest import REDIS_URL, bars_for
from tests.stream.helpers import Connection, ScriptedServer, batches_of, make_trades, recording

T10_MS = 1_709_632_800_000


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store file, an empty config directory and no metrics port."""
    monkeypatch.setenv("MARKETLAKE_STORE", f"duckdb:///{tmp_path}/ml.duckdb")
    monkeypatch.setenv("MARKETLAKE_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("MARKETLAKE_METRICS_PORT", "0")
    return tmp_path


@pytest.fixture
def ws_server() -> Iterator[ScriptedServer]:
    """The recorded session's first 90 seconds, served from a thread of its own."""
    lines = [x for x in recording() if json.loads(x)["data"]["E"] < T10_MS + 90_000]
    server = ScriptedServer([Connection(lines, "silent")])
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def main() -> None:
        async with server:
            ready.set()
            while not stopping.is_set():
                await asyncio.sleep(0.05)

    stopping = threading.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    ready.wait(5)
    yield server
    stopping.set()
    thread.join(5)
    loop.close()


def _json(text: str) -> Any:
    return json.loads(text)


def test_stream_with_the_memory_bus_runs_the_worker_in_process(
    env: Path,
    ws_server: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MARKETLAKE_BINANCE_WS_URL", ws_server.url)
    code = cli(["stream", "binance", "BTCUSDT", "ETHUSDT", "--duration", "2", "--json"])
    assert code == 0
    out = _json(capsys.readouterr().out)
    assert out["feed"]["state"] == "stopped"
    assert out["feed"]["malformed"] == 0
    assert out["worker"]["trades_inserted"] == out["feed"]["trades"] > 100
    store = open_store(f"duckdb:///{env}/ml.duckdb")
    assert store.count_bars("BTCUSDT", "1m") == 1  # 10:00 closed; 10:01 still open
    store.close()
    assert cli(["metrics", "BTCUSDT", "--json"]) == 0
    shown = _json(capsys.readouterr().out)
    assert [m["symbol"] for m in shown["metrics"]] == ["BTCUSDT"]
    assert shown["metrics"][0]["price"] > 60000
    assert cli(["metrics"]) == 0
    assert "Metrics" in capsys.readouterr().out


def test_stream_rejects_an_unknown_provider_and_a_bad_window(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["stream", "yahoo", "AAPL"]) == 2
    assert "no live feed for provider 'yahoo'" in capsys.readouterr().err
    assert cli(["stream", "binance", "BTCUSDT", "--window", "8-9"]) == 2
    assert "--window: '8' is not a time" in capsys.readouterr().err


def test_stream_outside_its_window_stays_disconnected(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARKETLAKE_BINANCE_WS_URL", "ws://127.0.0.1:1")
    from datetime import UTC, datetime, timedelta

    later = (datetime.now(UTC) + timedelta(hours=2)).strftime("%H:%M")
    closes = (datetime.now(UTC) + timedelta(hours=3)).strftime("%H:%M")
    assert (
        cli(["stream", "binance", "BTCUSDT", "--window", f"{later}-{closes}", "--duration", "0.5"])
        == 0
    )
    assert "outside-window" in capsys.readouterr().out


def test_worker_needs_a_shared_bus(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["worker", "--duration", "0.1"]) == 2
    assert "MARKETLAKE_BUS=redis://" in capsys.readouterr().err


def test_worker_with_a_bad_rule_file_names_rule_and_field(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARKETLAKE_BUS", "redis://127.0.0.1:1/0")
    (env / "alert_rules.yml").write_text("rules:\n  - {id: hot, kind: price_above}\n")
    assert cli(["worker"]) == 2
    assert "alert rule #1 'hot': field 'threshold': Field required" in capsys.readouterr().err


@pytest.mark.redis
def test_worker_consumes_redis_and_stores_everything(
    env: Path,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MARKETLAKE_BUS", REDIS_URL)
    monkeypatch.setenv("MARKETLAKE_BUS_PREFIX", redis_prefix)
    trades = make_trades("BTCUSDT", 2000, seed=11)

    async def publish() -> None:
        bus = RedisBus(REDIS_URL, prefix=redis_prefix)
        await bus.publish(batches_of(trades, 250))
        await bus.close()

    asyncio.run(publish())
    assert cli(["worker", "--name", "w-test", "--duration", "2.5", "--json"]) == 0
    out = _json(capsys.readouterr().out)
    assert out["events"] == 2000
    assert out["trades_inserted"] == 2000
    store = open_store(f"duckdb:///{env}/ml.duckdb")
    assert store.read_trades("BTCUSDT").num_rows == 2000
    store.close()

    async def pending() -> int:
        bus = RedisBus(REDIS_URL, prefix=redis_prefix)
        key = bus.key(RAW_TOPIC, shard_of("BTCUSDT", 8))
        info = await bus.redis.xpending(key, "workers")
        statuses = await bus.statuses()
        await bus.close()
        assert statuses["worker:w-test"]["state"] == "stopped"
        return int(info["pending"])

    assert asyncio.run(pending()) == 0


def test_replay_prints_metrics_and_alerts(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(f"duckdb:///{env}/ml.duckdb")
    bars = bars_for("AAPL", "1h", "2024-03-04", "2024-03-06")
    store.write_bars(bars)
    store.close()
    closes = bars.column("close").to_pylist()
    level = sorted(closes)[len(closes) // 2]
    (env / "alert_rules.yml").write_text(
        f"rules:\n  - {{id: mid, kind: price_cross, level: {level}}}\n"
    )
    assert cli(["replay", "AAPL", "-t", "1h", "--start", "2024-03-04", "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    bar_events = [e for e in events if e["type"] == "bar"]
    assert len(bar_events) == bars.num_rows
    assert [e["bar"]["close"] for e in bar_events] == closes
    crossings = sum((a >= level) != (b >= level) for a, b in itertools.pairwise(closes))
    assert sum(e["type"] == "alert" for e in events) == crossings > 0
    assert bar_events[-1]["metrics"]["price"] == closes[-1]
    fourth = bars.column("ts")[3].as_py().isoformat()
    assert cli(["replay", "AAPL", "-t", "1h", "--end", fourth]) == 0
    text = capsys.readouterr().out
    assert "3 bars" in text
    assert cli(["replay", "MSFT", "-t", "1h"]) == 2  # nothing stored: NotFoundError
    assert "no 1h bars of MSFT" in capsys.readouterr().err
    assert cli(["replay", "AAPL", "-t", "1mo"]) == 2
