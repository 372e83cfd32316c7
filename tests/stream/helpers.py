"""Shared helpers of the streaming tests: deterministic trades and their reference bars."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve

from marketlake.stream.events import Batch, trades_table

T0_US = 1_709_596_800_000_000  # 2024-03-05 00:00 UTC
MIN_US = 60_000_000


def make_trades(
    symbol: str,
    n: int,
    *,
    start_us: int = T0_US,
    seed: int = 1,
    mean_gap_s: float = 1.5,
    first_id: int = 1,
    source: str = "binance",
) -> pa.Table:
    """A deterministic random walk of ``n`` trades with sequential ids."""
    rng = np.random.default_rng(seed)
    ts = start_us + np.cumsum(rng.integers(1, int(mean_gap_s * 2e6), n))
    price = np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.001, n))), 4)
    size = np.round(rng.exponential(1.0, n), 6)
    side = ["buy" if s else "sell" for s in rng.integers(0, 2, n)]
    ids = [str(i) for i in range(first_id, first_id + n)]
    return trades_table(symbol, ts.tolist(), price.tolist(), size.tolist(), side, ids, source)


def batches_of(table: pa.Table, size: int, *, role: str = "live") -> list[Batch]:
    """Split one symbol's trades into bus batches of ``size`` rows."""
    symbol = table.column("symbol")[0].as_py()
    return [
        Batch("trade", symbol, table.slice(i, size), role)  # type: ignore[arg-type]
        for i in range(0, table.num_rows, size)
    ]


def reference_bars(trades: pa.Table, *, drop_last: bool = True) -> pd.DataFrame:
    """1-minute OHLCV bars of ``trades`` computed by pandas (the open last minute dropped)."""
    frame = trades.to_pandas()
    frame["pv"] = frame["price"] * frame["size"]
    grouped = frame.groupby(["symbol", frame["ts"].dt.floor("1min")])
    bars = grouped.agg(
        open=("price", "first"),
        high=("price", "max"),
        low=("price", "min"),
        close=("price", "last"),
        volume=("size", "sum"),
        trades=("price", "size"),
        pv=("pv", "sum"),
    )
    bars["vwap"] = bars.pop("pv") / bars["volume"]
    if drop_last:
        bars = bars.groupby(level=0, group_keys=False).apply(lambda g: g.iloc[:-1])
    return bars


def stored_bars(table: pa.Table) -> pd.DataFrame:
    """Stored bars in the shape of :func:`reference_bars`."""
    frame = table.to_pandas().set_index(["symbol", "ts"]).sort_index()
    return frame[["open", "high", "low", "close", "volume", "trades", "vwap"]]


# -- a local websocket server replaying a recorded Binance session ----------------------

DATA = Path(__file__).resolve().parents[1] / "data" / "binance"


def recording() -> list[str]:
    """The recorded combined-stream messages, in the exchange's exact format."""
    return (DATA / "ws_session.jsonl").read_text().splitlines()


def event_ms(line: str) -> int:
    return int(json.loads(line)["data"]["E"])


@dataclass
class Connection:
    """What the server does on one connection: send lines, then ``end`` (abort|close|silent).

    ``clock_us`` is what the feed's clock says while this connection is open.
    """

    lines: list[str] = field(default_factory=list)
    end: str = "silent"
    clock_us: int = 0
    pause_s: float = 0.0


@dataclass
class ScriptedServer:
    """A websocket server on 127.0.0.1 playing one :class:`Connection` per client connection."""

    script: list[Connection]
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    paths: list[str] = field(default_factory=list)
    clock_us: int = 0
    port: int = 0
    server: Any = None

    async def __aenter__(self) -> ScriptedServer:
        self.server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def connect(self, url: str, **options: Any) -> Any:
        """The feed's connect callable: sets the clock of the next connection, then connects."""
        index = len(self.paths)
        if index < len(self.script) and self.script[index].clock_us:
            self.clock_us = self.script[index].clock_us
        return ws_connect(url, **options)

    def clock(self) -> int:
        return self.clock_us

    async def _handle(self, ws: Any) -> None:
        self.paths.append(ws.request.path)
        index = len(self.paths) - 1
        plan = self.script[index] if index < len(self.script) else Connection()
        for line in plan.lines:
            await ws.send(line)
            if plan.pause_s:
                await asyncio.sleep(plan.pause_s)
        if plan.end == "abort":
            ws.transport.abort()
        elif plan.end == "close":
            await ws.close()
        else:
            await ws.wait_closed()


def klines_transport(requests: list[dict[str, str]], *, status: int = 200) -> httpx.MockTransport:
    """A mock of GET /api/v3/klines serving the recorded klines of the asked range."""
    recorded = json.loads((DATA / "klines_1m.json").read_text())

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        requests.append({"path": request.url.path, **params})
        if status != 200:
            return httpx.Response(status, json={"code": -1003, "msg": "Too many requests."})
        start, end = int(params["startTime"]), int(params["endTime"])
        rows = [r for r in recorded.get(params["symbol"], []) if start <= r[0] <= end]
        return httpx.Response(200, json=rows[: int(params["limit"])])

    return httpx.MockTransport(handler)


class FlakyProxy:
    """A TCP proxy on 127.0.0.1 (its own thread) that can drop every connection and
    refuse new ones for a while: a Redis that goes away and comes back."""

    def __init__(self, host: str, port: int) -> None:
        import socket
        import threading

        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down_until = 0.0
        self.cuts = 0
        self._lock = threading.Lock()
        self._open: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading
        import time

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.down_until:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: Any, sink: Any) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self, seconds: float) -> None:
        """Drop every connection now and refuse new ones for ``seconds``."""
        import socket
        import time

        self.down_until = time.monotonic() + seconds
        self.cuts += 1
        with self._lock:
            live, self._open = self._open, []
        for s in live:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self.cut(0)
