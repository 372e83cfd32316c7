"""The offline mirror's Binance websocket: Binance's message shapes, the same price path
as the mirror's REST klines, and the live feed reading it like the exchange."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from marketlake.config import Settings
from marketlake.stream.binance import BinanceFeed
from marketlake.stream.events import Batch
from marketlake.tools.binance_stream import MINUTE_MS, BinanceStream, StreamServer
from marketlake.tools.mirror import Mirror, synthetic_source

MINUTE = int(datetime(2024, 3, 4, 10, 7, tzinfo=UTC).timestamp() * 1000)
KLINE_KEYS = {"t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B"}


def rest_kline(symbol: str, start_ms: int) -> list[Any]:
    """The mirror's ``GET /api/v3/klines`` row of one minute."""
    query = {
        "symbol": symbol,
        "interval": "1m",
        "startTime": str(start_ms),
        "endTime": str(start_ms + MINUTE_MS - 1),
    }
    answer = Mirror().answer("/api/v3/klines", query)
    assert answer.status == 200
    (row,) = orjson.loads(answer.body)
    return list(row)


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT"])
def test_a_minutes_trades_make_the_rest_kline_of_that_minute(symbol: str) -> None:
    minute = BinanceStream(synthetic_source).minute(symbol, MINUTE)
    assert minute is not None
    row = rest_kline(symbol, MINUTE)
    prices = [float(p) for p in minute.prices]
    assert minute.prices[0] == row[1]  # open
    assert max(prices) == float(row[2])  # high
    assert min(prices) == float(row[3])  # low
    assert minute.prices[-1] == row[4]  # close
    assert f"{sum(minute.sizes) / 1e8:.8f}" == row[5]  # volume
    assert len(minute.times) == row[8]  # trade count
    assert minute.times == sorted(minute.times)
    assert minute.times[0] >= MINUTE
    assert minute.times[-1] < MINUTE + MINUTE_MS
    closed = minute.kline(len(minute.times), event_ms=MINUTE + MINUTE_MS)["k"]
    assert closed["x"] is True
    rest_fields = ("t", "o", "h", "l", "c", "v", "T", "q", "n", "V", "Q", "B")
    assert [closed[k] for k in rest_fields] == row


def test_the_trades_are_a_function_of_symbol_and_minute() -> None:
    one = BinanceStream(synthetic_source).minute("BTCUSDT", MINUTE)
    two = BinanceStream(synthetic_source).minute("BTCUSDT", MINUTE)
    other = BinanceStream(synthetic_source).minute("BTCUSDT", MINUTE + MINUTE_MS)
    assert one == two
    assert other is not None
    assert one is not None
    assert other.prices != one.prices
    assert other.first_id > one.first_id + len(one.times) - 1  # ids keep increasing


class FastClock:
    """Epoch ms that runs 60 times faster than the wall (a minute a second)."""

    def __init__(self, start_ms: int) -> None:
        self.now = start_ms
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self.now += 6_000  # the server reads the clock once per 0.1 s tick
            return self.now


@pytest.fixture
def fast_server() -> Iterator[StreamServer]:
    server = StreamServer(BinanceStream(synthetic_source), clock=FastClock(MINUTE + 30_000 - 6_000))
    try:
        yield server
    finally:
        server.close()


async def receive(url: str, until: Any, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """Messages of ``url`` until ``until(messages)`` holds (at most ``timeout_s``)."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s), connect(url) as ws:
        while not until(got):
            got.append(orjson.loads(await ws.recv()))
    return got


def _closed(symbol: str) -> Any:
    def done(messages: list[dict[str, Any]]) -> bool:
        return any(
            m["stream"] == f"{symbol.lower()}@kline_1m" and m["data"]["k"]["x"] for m in messages
        )

    return done


async def test_the_websocket_speaks_binances_combined_stream_format(
    fast_server: StreamServer,
) -> None:
    url = f"{fast_server.url}/stream?streams=btcusdt@trade/btcusdt@kline_1m/ethusdt@trade"
    messages = await receive(url, _closed("BTCUSDT"))
    assert {m["stream"] for m in messages} <= {"btcusdt@trade", "btcusdt@kline_1m", "ethusdt@trade"}
    assert set(messages[0]) == {"stream", "data"}
    trades = [m["data"] for m in messages if m["stream"] == "btcusdt@trade"]
    assert trades, "no trade before the minute closed"
    for trade in trades:
        assert set(trade) == {"e", "E", "s", "t", "p", "q", "T", "m", "M"}
        assert trade["e"] == "trade"
        assert trade["s"] == "BTCUSDT"
        assert isinstance(trade["t"], int)
        assert isinstance(trade["T"], int)
        assert isinstance(trade["E"], int)
        assert isinstance(trade["m"], bool)
        assert float(trade["p"]) > 0
        assert float(trade["q"]) >= 0
        assert isinstance(trade["p"], str)
        assert isinstance(trade["q"], str)
    # sent from the connection on: the second half of the first minute, in order
    assert [t["T"] for t in trades] == sorted(t["T"] for t in trades)
    assert trades[0]["T"] >= MINUTE + 30_000
    klines = [m["data"] for m in messages if m["stream"] == "btcusdt@kline_1m"]
    for kline in klines:
        assert set(kline) == {"e", "E", "s", "k"}
        assert kline["e"] == "kline"
        assert set(kline["k"]) == KLINE_KEYS
        assert kline["k"]["i"] == "1m"
    final = klines[-1]["k"]
    assert final["x"] is True
    assert final["t"] == MINUTE
    row = rest_kline("BTCUSDT", MINUTE)
    assert [final[k] for k in ("o", "h", "l", "c", "v", "n")] == [*row[1:6], row[8]]
    # the trades sent are the minute's trades after the connection, to the last one
    minute = BinanceStream(synthetic_source).minute("BTCUSDT", MINUTE)
    assert minute is not None
    assert trades[-1]["t"] == final["L"]
    assert trades[-1]["p"] == final["c"]
    assert [t["p"] for t in trades] == minute.prices[-len(trades) :]
    # in-progress klines come first and never claim more than the closed one
    assert all(not k["k"]["x"] for k in klines[:-1])
    assert all(k["k"]["n"] <= final["n"] for k in klines)


@pytest.mark.parametrize(
    "path", ["/ws/btcusdt@trade", "/stream?streams=btcusdt@depth", "/stream?streams="]
)
async def test_an_unknown_stream_is_refused_with_a_reason(
    fast_server: StreamServer, path: str
) -> None:
    async with asyncio.timeout(10), connect(fast_server.url + path) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason


async def test_the_live_feed_reads_the_mirror_through_the_ws_url_setting() -> None:
    """MARKETLAKE_BINANCE_WS_URL points the feed at the mirror: trades and klines arrive
    as canonical batches, nothing is malformed or unknown."""
    mirror = Mirror()
    ws = mirror.serve_websocket()
    published: list[Batch] = []
    stop = asyncio.Event()

    async def publish(batches: Any) -> None:
        published.extend(batches)
        kinds = {b.kind for b in published}
        if {"trade", "bar"} <= kinds:
            stop.set()

    try:
        settings = Settings(binance_ws_url=ws.url, stream_linger_ms=5)
        feed = BinanceFeed(settings, ["BTCUSDT", "ETHUSDT"], publish)
        assert feed.url.startswith(ws.url + "/stream?streams=btcusdt@trade")
        async with asyncio.timeout(30):
            state = await feed.run(stop)
    finally:
        ws.close()
    assert state.malformed == 0
    assert state.unknown == 0
    assert state.trades > 0
    assert state.bars > 0
    trade = next(b for b in published if b.kind == "trade")
    assert trade.table.column("source")[0].as_py() == "binance"
    assert trade.symbol in ("BTCUSDT", "ETHUSDT")
