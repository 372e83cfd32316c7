"""The Binance feed against a local websocket server replaying a recorded session."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from marketlake.config import Settings
from marketlake.errors import BusError, InputError
from marketlake.providers.binance.rest import BinanceProvider
from marketlake.schema import from_epoch_us
from marketlake.store import Store
from marketlake.stream.binance import BinanceFeed
from marketlake.stream.bus import MemoryBus
from marketlake.stream.events import Batch
from marketlake.stream.live import run_stream
from marketlake.stream.windows import Schedule
from tests.stream.helpers import (
    DATA,
    Connection,
    ScriptedServer,
    event_ms,
    klines_transport,
    recording,
)

T10_MS = 1_709_632_800_000  # 2024-03-05T10:00:00Z, the start of the recording
BAD = [
    "this is not json",
    "[1, 2, 3]",
    '{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT"}}',
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"-5",'
    '"q":"1","T":1,"m":true,"M":true}}',
    '{"stream":"dogeusdt@trade","data":{"e":"trade","E":1,"s":"DOGEUSDT","t":1,"p":"0.1",'
    '"q":"1","T":1,"m":true,"M":true}}',
    '{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1,"s":"BTCUSDT","k":{"t":0,"T":59999,'
    '"s":"BTCUSDT","i":"1m","f":1,"L":2,"o":"10","c":"10","h":"9","l":"11","v":"1","n":2,'
    '"x":true,"q":"10","V":"0","Q":"0","B":"0"}}}',
    '{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1,"s":"BTCUSDT","k":"broken"}}',
]
CONTROL = ['{"result":null,"id":1}', '{"stream":"btcusdt@depth","data":{"e":"depthUpdate"}}']


def _settings(tmp_path: Path, server: ScriptedServer, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "binance_ws_url": server.url,
        "binance_url": "http://binance.test",
        "stream_stall_s": 0.6,
        "stream_backoff_initial_s": 0.05,
        "stream_backoff_max_s": 0.1,
        "stream_linger_ms": 5,
        "config_dir": tmp_path,
        **extra,
    }
    return Settings(**values)


def _lines(start_s: float, end_s: float) -> list[str]:
    return [
        line
        for line in recording()
        if T10_MS + start_s * 1000 <= event_ms(line) < T10_MS + end_s * 1000
    ]


async def _until(condition: Any, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_disconnect_is_backfilled_once_and_bad_input_is_skipped(
    tmp_path: Path, duck: Store
) -> None:
    """Drop at 10:01:20, back at 10:02:45: 10:01 comes from REST; bad frames are counted."""
    first, second = _lines(0, 80), _lines(165, 999)
    script = [
        Connection(first, "abort", clock_us=T10_MS * 1000),
        Connection(BAD + CONTROL + second, "silent", clock_us=(T10_MS + 165_000) * 1000),
        Connection([], "silent", clock_us=(T10_MS + 215_000) * 1000),
    ]
    requests: list[dict[str, str]] = []
    async with (
        ScriptedServer(script) as server,
        httpx.AsyncClient(transport=klines_transport(requests)) as client,
    ):
        stop = asyncio.Event()
        run = asyncio.create_task(
            run_stream(
                _settings(tmp_path, server),
                MemoryBus(),
                "binance",
                ["BTCUSDT", "ethusdt"],
                stop=stop,
                store=duck,
                client=client,
                connect=server.connect,
                clock=server.clock,
            )
        )
        await _until(lambda: len(server.paths) == 3)
        stop.set()
        result = await run
    feed = result.feed
    assert server.paths[0] == (
        "/stream?streams=btcusdt@trade/btcusdt@kline_1m/ethusdt@trade/ethusdt@kline_1m"
    )
    assert sorted((r["symbol"], r["startTime"], r["endTime"]) for r in requests) == [
        (s, str(T10_MS + 60_000), str(T10_MS + 120_000 - 1)) for s in ("BTCUSDT", "ETHUSDT")
    ]
    assert (feed.malformed, feed.unknown) == (len(BAD), 1)
    assert (feed.reconnects, feed.stalls, feed.backfilled_bars) == (2, 1, 2)
    assert feed.state == "stopped"
    recorded = json.loads((DATA / "klines_1m.json").read_text())
    for symbol in ("BTCUSDT", "ETHUSDT"):
        stored = duck.read_bars(symbol, "1m").table.to_pylist()
        expected = recorded[symbol]
        assert [int(b["ts"].timestamp() * 1000) for b in stored] == [r[0] for r in expected]
        for bar, row in zip(stored, expected, strict=True):
            assert (
                bar["open"],
                bar["high"],
                bar["low"],
                bar["close"],
                bar["volume"],
                bar["trades"],
            ) == (float(row[1]), float(row[2]), float(row[3]), float(row[4]), float(row[5]), row[8])
            assert bar["vwap"] == pytest.approx(float(row[7]) / float(row[5]), rel=1e-12)
            assert bar["source"] == "binance"
    sent = [json.loads(x)["data"] for x in first + second if "@trade" in x]
    stored_ids = (
        duck.read_trades("BTCUSDT").column("trade_id").to_pylist()
        + duck.read_trades("ETHUSDT").column("trade_id").to_pylist()
    )
    assert sorted(stored_ids) == sorted(str(t["t"]) for t in sent)
    last_btc = [t for t in sent if t["s"] == "BTCUSDT"][-1]
    price = duck.select_rows("metrics", {"symbol": "BTCUSDT", "name": "price"})[0]["value"]
    assert price == float(last_btc["p"])
    assert result.worker is not None
    assert result.worker.events == len(sent) + feed.bars + feed.backfilled_bars


def _feed(settings: Settings, **kw: Any) -> tuple[BinanceFeed, list[Batch]]:
    published: list[Batch] = []

    async def publish(batches: Any) -> None:
        published.extend(batches)

    return BinanceFeed(settings, ["BTCUSDT", "ETHUSDT"], publish, **kw), published


async def test_messages_become_exact_canonical_trades_and_bars() -> None:
    feed, published = _feed(Settings())
    lines = _lines(0, 62)
    for line in lines:
        feed.handle(line)
    await feed.flush()
    trades = next(b for b in published if b.kind == "trade" and b.symbol == "BTCUSDT")
    first = json.loads(next(x for x in lines if "btcusdt@trade" in x))["data"]
    row = trades.table.slice(0, 1).to_pylist()[0]
    assert row["trade_id"] == str(first["t"])
    assert row["price"] == float(first["p"])
    assert row["size"] == float(first["q"])
    assert row["side"] == ("sell" if first["m"] else "buy")
    assert int(row["ts"].timestamp() * 1000) == first["T"]
    final = [b for b in published if b.kind == "bar" and b.final]
    assert sorted(b.symbol for b in final) == ["BTCUSDT", "ETHUSDT"]
    closed = json.loads(next(x for x in lines if '"x":true' in x and "btcusdt" in x))["data"]["k"]
    bar = next(b for b in final if b.symbol == "BTCUSDT").table.to_pylist()[0]
    assert (bar["open"], bar["close"], bar["trades"]) == (
        float(closed["o"]),
        float(closed["c"]),
        closed["n"],
    )
    assert any(b.kind == "bar" and not b.final for b in published)
    assert feed.state.trades + feed.state.bars == len(lines)


async def test_batches_are_published_when_full() -> None:
    feed, published = _feed(Settings(stream_batch_events=50))
    async with ScriptedServer([Connection(_lines(0, 60), "silent")]) as server:
        feed.settings = Settings(
            binance_ws_url=server.url, stream_batch_events=50, stream_linger_ms=60_000
        )
        feed.connect = server.connect
        stop = asyncio.Event()
        run = asyncio.create_task(feed.run(stop))
        await _until(lambda: feed.state.messages >= len(_lines(0, 60)))
        stop.set()
        await run
    assert max(len(b) for b in published) <= 50
    assert sum(len(b) for b in published) == len(_lines(0, 60))


async def test_server_pings_are_answered_and_keep_the_connection(tmp_path: Path) -> None:
    async with ScriptedServer(
        [Connection(_lines(0, 5), "silent")], ping_interval=0.1, ping_timeout=0.2
    ) as server:
        feed, _ = _feed(_settings(tmp_path, server, stream_stall_s=30), connect=server.connect)
        stop = asyncio.Event()
        run = asyncio.create_task(feed.run(stop))
        await asyncio.sleep(1.0)
        stop.set()
        state = await run
    assert state.reconnects == 0
    assert len(server.paths) == 1


async def test_planned_reconnect_before_the_connection_limit(tmp_path: Path) -> None:
    script = [Connection(_lines(0, 2), "silent"), Connection(_lines(2, 4), "silent")]
    async with ScriptedServer(script) as server:
        feed, _ = _feed(
            _settings(tmp_path, server, stream_max_connection_s=0.3), connect=server.connect
        )
        stop = asyncio.Event()
        run = asyncio.create_task(feed.run(stop))
        await _until(lambda: len(server.paths) >= 2)
        stop.set()
        state = await run
    assert state.planned_reconnects >= 1
    assert state.reconnects == 0
    assert state.stalls == 0


async def test_server_shutdown_event_reconnects_at_once(tmp_path: Path) -> None:
    shutdown = '{"e":"serverShutdown","E":1709632860000}'
    async with ScriptedServer([Connection([shutdown], "silent"), Connection()]) as server:
        feed, _ = _feed(_settings(tmp_path, server), connect=server.connect)
        stop = asyncio.Event()
        run = asyncio.create_task(feed.run(stop))
        await _until(lambda: len(server.paths) == 2)
        stop.set()
        state = await run
    assert (state.planned_reconnects, state.reconnects) == (1, 0)


async def test_unreachable_server_is_retried_with_backoff(tmp_path: Path) -> None:
    settings = Settings(
        binance_ws_url="ws://127.0.0.1:1",
        stream_backoff_initial_s=0.05,
        stream_backoff_max_s=0.05,
        config_dir=tmp_path,
    )
    states: list[str] = []

    async def status(state: Any) -> None:
        states.append(state.state)

    feed, _ = _feed(settings, status=status)
    stop = asyncio.Event()
    run = asyncio.create_task(feed.run(stop))
    await _until(lambda: feed.state.reconnects >= 3)
    stop.set()
    state = await run
    assert "reconnecting" in states
    assert state.last_error is not None
    assert "Connect" in state.last_error or "Errno" in state.last_error


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    settings = Settings(stream_backoff_initial_s=1, stream_backoff_max_s=10)
    low, _ = _feed(settings, jitter=lambda: 0.0)
    high, _ = _feed(settings, jitter=lambda: 1.0)
    assert [low._backoff(a) for a in range(6)] == [0.5, 1, 2, 4, 5, 5]
    assert [high._backoff(a) for a in range(6)] == [1, 2, 4, 8, 10, 10]


async def test_failed_backfill_is_recorded_as_a_gap_and_streaming_goes_on(tmp_path: Path) -> None:
    script = [
        Connection(_lines(0, 80), "abort", clock_us=T10_MS * 1000),
        Connection(_lines(165, 170), "silent", clock_us=(T10_MS + 165_000) * 1000),
    ]
    requests: list[dict[str, str]] = []
    async with (
        ScriptedServer(script) as server,
        httpx.AsyncClient(transport=klines_transport(requests, status=429)) as client,
    ):
        feed, published = _feed(
            _settings(tmp_path, server, stream_stall_s=30),
            connect=server.connect,
            clock=server.clock,
            client=client,
        )
        waits: list[float] = []

        async def wait(seconds: float) -> None:
            waits.append(seconds)

        feed.rest.sleep = wait  # the provider's retries, without the waiting
        stop = asyncio.Event()
        run = asyncio.create_task(feed.run(stop))
        await _until(lambda: feed.state.messages >= len(_lines(0, 80)) + len(_lines(165, 170)))
        stop.set()
        state = await run
    assert len(state.gaps) == 2
    assert state.gaps[0] == [(T10_MS + 60_000) * 1000, (T10_MS + 120_000) * 1000]
    assert "HTTP 429" in (state.last_error or "")
    assert not any(b.role == "backfill" for b in published)
    attempts = BinanceProvider.retry.attempts  # the shared client retried each symbol
    assert len(requests) == 2 * attempts
    assert len(waits) == 2 * (attempts - 1)


async def test_outside_the_window_the_feed_does_not_connect(tmp_path: Path) -> None:
    async with ScriptedServer([Connection()]) as server:
        feed, _ = _feed(
            _settings(tmp_path, server),
            connect=server.connect,
            clock=lambda: T10_MS * 1000,
            schedule=Schedule.parse(["11:00-12:00"]),
        )
        stop = asyncio.Event()
        run = asyncio.create_task(feed.run(stop))
        await asyncio.sleep(0.3)
        assert feed.state.state == "outside-window"
        stop.set()
        await run
    assert server.paths == []


async def test_the_window_end_disconnects(tmp_path: Path) -> None:
    now = {"us": (T10_MS + 59_000) * 1000}
    async with ScriptedServer([Connection(_lines(0, 3), "silent")]) as server:
        feed, _ = _feed(
            _settings(tmp_path, server, stream_stall_s=30),
            connect=server.connect,
            clock=lambda: now["us"],
            schedule=Schedule.parse(["10:00-10:01"]),
        )
        stop = asyncio.Event()
        run = asyncio.create_task(feed.run(stop))
        await _until(lambda: feed.state.state == "connected")
        now["us"] += 30_000_000  # the clock passes 10:01 while the deadline (1 s) runs out
        await _until(lambda: feed.state.state == "outside-window")
        stop.set()
        state = await run
    assert state.planned_reconnects == 1


async def test_the_backfill_pages_through_long_ranges_with_the_rest_provider() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params["startTime"])
        calls.append(start)
        first = -(-start // 60_000) * 60_000  # the first open time at or after startTime
        end = min(first + 1000 * 60_000, int(request.url.params["endTime"]) + 1)
        rows = [
            [t, "1", "2", "0.5", "1.5", "10", t + 59_999, "15", 3, "0", "0", "0"]
            for t in range(first, end, 60_000)
        ]
        return httpx.Response(200, json=rows)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        feed, _ = _feed(Settings(binance_url="http://x"), client=client)
        table = await feed._klines("BTCUSDT", T10_MS * 1000, (T10_MS + 1500 * 60_000) * 1000)
    assert table.num_rows == 1500
    assert calls == [T10_MS, T10_MS + 999 * 60_000 + 1]
    assert table.column("ts").to_pylist()[-1].timestamp() * 1000 == T10_MS + 1499 * 60_000
    assert table.column("vwap")[0].as_py() == 1.5


async def test_unknown_live_provider_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no live feed for provider 'yahoo'"):
        await run_stream(
            Settings(config_dir=tmp_path), MemoryBus(), "yahoo", ["AAPL"], stop=asyncio.Event()
        )


def _flaky_bus(fail: int) -> tuple[list[Batch], dict[str, int], Any]:
    """A publish that fails ``failures["left"]`` times, then keeps what it is given."""
    published: list[Batch] = []
    failures = {"left": fail}

    async def publish(batches: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise BusError("redis is restarting")
        published.extend(batches)

    return published, failures, publish


async def test_a_bus_outage_keeps_events_while_reading_goes_on_and_loses_nothing() -> None:
    published, failures, publish = _flaky_bus(2)

    async def status(state: Any) -> None:
        raise BusError("redis is restarting")

    feed = BinanceFeed(Settings(), ["BTCUSDT", "ETHUSDT"], publish, status=status)
    for line in _lines(0, 10):
        feed.handle(line)
    await feed.flush()  # fails: kept, and flush returns so that reading goes on
    assert published == []
    assert feed.state.unpublished == len(_lines(0, 10))
    assert feed.state.last_error == "bus: redis is restarting"
    feed.handle(_lines(10, 11)[0])
    await _until_published(feed)
    expected = [json.loads(x)["data"] for x in [*_lines(0, 10), _lines(10, 11)[0]]]
    for symbol in ("BTCUSDT", "ETHUSDT"):  # each symbol's trades in order, once
        got = [
            t
            for b in published
            if b.kind == "trade" and b.symbol == symbol
            for t in b.table["trade_id"].to_pylist()
        ]
        assert got == [str(d["t"]) for d in expected if d["e"] == "trade" and d["s"] == symbol]
    assert feed.state.unpublished == 0
    await feed._set("connected")  # a status the bus cannot take is only lost
    failures["left"] = 5
    feed.handle(_lines(11, 12)[0])
    await feed.flush(attempts=2)  # at shutdown: give up after two attempts
    assert sum(len(b) for b in published) == len(_lines(0, 10)) + 1
    assert feed.state.unpublished == 0


async def _until_published(feed: BinanceFeed) -> None:
    for _ in range(200):
        await feed.flush()
        if not feed.state.unpublished:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("never published")


async def test_past_the_buffer_bound_the_feed_waits_for_the_bus() -> None:
    published, failures, publish = _flaky_bus(3)

    feed = BinanceFeed(Settings(stream_buffer_events=5), ["BTCUSDT", "ETHUSDT"], publish)
    for line in _lines(0, 10):
        feed.handle(line)
    await feed.flush()  # above the bound: retries until the bus takes it (reading waits)
    assert failures["left"] == 0
    assert sum(len(b) for b in published) == len(_lines(0, 10))
    assert feed.state.unpublished == 0
    assert feed.state.last_error == "bus: redis is restarting"
    await feed._set("connected")  # a status the bus cannot take is only lost
    failures["left"] = 5
    feed.handle(_lines(10, 11)[0])
    await feed.flush(attempts=2)
    assert sum(len(b) for b in published) == len(_lines(0, 10))


KLINES = [  # REST arrays: a kline with trades, then one without (volume 0)
    [T10_MS, "62000.1", "62010", "61990", "62005", "1.5", T10_MS + 59_999, "93007.5", 12, "0.7"],
    [T10_MS + 60_000, "62005", "62005", "62005", "62005", "0", T10_MS + 119_999, "0", 0, "0"],
]
for _row in KLINES:
    _row += ["0", "0"]  # taker buy quote volume (not used), ignore


def _kline_message(row: list[Any]) -> str:
    """The websocket message of a closed REST kline ``row``, as Binance sends it."""
    keys = ("t", "o", "h", "l", "c", "v", "T", "q", "n", "V", "Q", "B")
    k = dict(zip(keys, row, strict=True)) | {"s": "BTCUSDT", "i": "1m", "x": True}
    data = {"e": "kline", "s": "BTCUSDT", "k": k}
    return json.dumps({"stream": "btcusdt@kline_1m", "data": data})


async def test_a_kline_without_volume_has_a_null_vwap_on_every_path() -> None:
    """REST (plain and otherwise), websocket and backfill give the same bars; vwap is null
    where the volume is 0."""

    def serve(body: bytes) -> httpx.AsyncClient:
        answer = httpx.Response(200, content=body)
        return httpx.AsyncClient(transport=httpx.MockTransport(lambda _: answer))

    start, end = from_epoch_us(T10_MS * 1000), from_epoch_us((T10_MS + 120_000) * 1000)
    tables: dict[str, pa.Table] = {}
    for path, body in (
        ("rest, plain layout", json.dumps(KLINES, separators=(",", ":")).encode()),
        ("rest, other layout", json.dumps(KLINES, indent=1).encode()),
    ):
        async with serve(body) as client:
            provider = BinanceProvider(Settings(binance_url="http://x"), client)
            tables[path] = pa.concat_tables(
                [t async for t in provider.fetch_bars("BTCUSDT", "1m", start, end)]
            )
    async with serve(json.dumps(KLINES).encode()) as client:
        feed, published = _feed(Settings(binance_url="http://x"), client=client)
        tables["backfill"] = await feed._klines("BTCUSDT", T10_MS * 1000, (T10_MS + 120_000) * 1000)
    for row in KLINES:
        feed.handle(_kline_message(row))
    await feed.flush()
    assert feed.state.malformed == 0
    tables["websocket"] = pa.concat_tables(b.table for b in published if b.kind == "bar")
    for path, table in tables.items():
        assert table.equals(tables["rest, plain layout"]), path
        assert table.column("vwap").to_pylist() == [93007.5 / 1.5, None], path
        assert table.column("volume").to_pylist() == [1.5, 0.0], path
