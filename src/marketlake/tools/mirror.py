"""A local stand-in for the vendors' APIs: Yahoo chart, Alpaca bars, Binance klines and
the Binance websocket (trades and klines, :mod:`marketlake.tools.binance_stream`).

The mirror serves bars from a source (by default the deterministic synthetic
market of :mod:`marketlake.providers.synthetic`) in each vendor's wire format,
paged the vendor's way. Every answer is recorded under its URL and replayed
byte for byte when the same request comes again, so a second run measures the
client, not the rendering. Tests, benchmarks and offline demos point the
provider URL settings at it::

    python -m marketlake.tools.mirror --port 8765 --ws-port 8766 &
    MARKETLAKE_BINANCE_URL=http://127.0.0.1:8765 marketlake ingest binance BTCUSDT -t 1m --period 2d
    MARKETLAKE_BINANCE_URL=http://127.0.0.1:8765 MARKETLAKE_BINANCE_WS_URL=ws://127.0.0.1:8766 \
        marketlake serve --stream binance:BTCUSDT,ETHUSDT

The websocket's trades and klines follow the same price path as the REST klines.

It is a test double, not a vendor: no auth, no corporate actions, no rate limits.
"""

from __future__ import annotations

import argparse
import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import orjson
import pyarrow as pa

from marketlake.schema import Timeframe, default_instrument, parse_time, to_epoch_us
from marketlake.tools.binance_stream import BinanceStream, StreamServer, kline_fields

Source = Callable[[str, str, datetime, datetime], pa.Table]
"""``(symbol, timeframe, start, end)`` → canonical bars in ``[start, end)``; raises
:class:`UnknownSymbol` for a symbol the mirrored vendor would not know."""


class UnknownSymbol(LookupError):
    """Raised by a source for a symbol it does not have; answered as the vendor would."""


_YAHOO = {
    "1m": "1m",
    "5m": "5m",
    "15m": "15m",
    "30m": "30m",
    "60m": "1h",
    "1h": "1h",
    "1d": "1d",
    "1wk": "1w",
    "1mo": "1mo",
}
_BINANCE = {"1M": "1mo"}
REST_KLINE = ("t", "o", "h", "l", "c", "v", "T", "q", "n", "V", "Q", "B")
"""The fields of a websocket kline in the order of a REST kline's array."""
_ALPACA = {"Min": "m", "Hour": "h", "Day": "d", "Week": "w", "Month": "mo"}


def synthetic_source(symbol: str, timeframe: str, start: datetime, end: datetime) -> pa.Table:
    """Bars of the synthetic market (stocks on NYSE sessions, ``*USDT``/``*/USD`` 24/7)."""
    from marketlake.providers.synthetic import generate_bars

    bars = generate_bars(symbol, timeframe, start, end)
    return bars.set_column(0, "symbol", pa.array([symbol] * bars.num_rows, pa.string()))


@dataclass(frozen=True, slots=True)
class Answer:
    """One recorded HTTP answer."""

    status: int
    body: bytes
    content_type: str = "application/json"


class Mirror:
    """Renders and records vendor answers; see the module docstring."""

    def __init__(self, source: Source = synthetic_source, *, delay_s: float = 0.0) -> None:
        self.source = source
        self.delay_s = delay_s
        self.recorded: dict[str, Answer] = {}
        self.requests = 0
        self._lock = threading.Lock()

    def answer(self, path: str, query: dict[str, str]) -> Answer:
        """The answer to ``GET path?query``: replayed when recorded, else rendered and kept."""
        key = f"{path}?{urlencode(sorted(query.items()))}"
        with self._lock:
            self.requests += 1
            found = self.recorded.get(key)
        if found is None:
            found = self._render(unquote(path), query)
            with self._lock:
                self.recorded[key] = found
        if self.delay_s:
            time.sleep(self.delay_s)
        return found

    def _render(self, path: str, query: dict[str, str]) -> Answer:
        try:
            if path.startswith("/v8/finance/chart/"):
                return self._yahoo(path.rsplit("/", 1)[1], query)
            if path == "/api/v3/klines":
                return self._binance(query)
            if path.startswith(("/v2/stocks/", "/v1beta3/crypto/us/bars")):
                return self._alpaca(path, query)
        except UnknownSymbol as exc:
            return _not_found(path, str(exc))
        except (KeyError, ValueError) as exc:
            return Answer(400, orjson.dumps({"message": f"bad request: {exc}"}))
        return Answer(404, orjson.dumps({"message": f"the mirror does not serve {path}"}))

    # -- Yahoo --------------------------------------------------------------------------

    def _yahoo(self, symbol: str, query: dict[str, str]) -> Answer:
        tf = Timeframe.parse(_YAHOO[query["interval"]])
        lo = datetime.fromtimestamp(int(query["period1"]), UTC)
        hi = datetime.fromtimestamp(int(query["period2"]), UTC)
        info = default_instrument(symbol)
        pad = timedelta(days=0 if tf.is_intraday else 2)
        bars = self.source(symbol, str(tf), lo - pad, hi + pad)
        ts_us = bars.column("ts").cast(pa.int64()).to_numpy()
        if not tf.is_intraday:
            ts_us = _session_open_us(ts_us, info.timezone)
        keep = (ts_us >= to_epoch_us(lo)) & (ts_us < to_epoch_us(hi))
        cols = {
            n: bars.column(n).to_numpy()[keep].tolist()
            for n in ("open", "high", "low", "close", "volume")
        }
        meta = {
            "currency": info.currency,
            "symbol": symbol,
            "exchangeName": "MLM",
            "fullExchangeName": "MarketLake Mirror",
            "instrumentType": "CRYPTOCURRENCY" if info.asset_class == "crypto" else "EQUITY",
            "exchangeTimezoneName": info.timezone,
            "dataGranularity": query["interval"],
        }
        result: dict[str, Any] = {"meta": meta}
        if keep.any():
            result["timestamp"] = (ts_us[keep] // 1_000_000).tolist()
        result["indicators"] = {"quote": [cols]}
        return Answer(200, orjson.dumps({"chart": {"result": [result], "error": None}}))

    # -- Binance ------------------------------------------------------------------------

    def _binance(self, query: dict[str, str]) -> Answer:
        tf = Timeframe.parse(_BINANCE.get(query["interval"], query["interval"]))
        limit = min(int(query.get("limit", 500)), 1000)
        lo_ms, hi_ms = int(query["startTime"]), int(query["endTime"])
        bars = self._window(query["symbol"], tf, lo_ms * 1000, (hi_ms + 1) * 1000, limit)
        rows = []
        for bar in bars.to_pylist():
            k = kline_fields(bar, tf.seconds * 1000)
            rows.append([k[name] for name in REST_KLINE])
        return Answer(200, orjson.dumps(rows))

    def _window(self, symbol: str, tf: Timeframe, lo_us: int, hi_us: int, limit: int) -> pa.Table:
        """The first ``limit`` bars in ``[lo, hi)``, widening the window over gaps."""
        step_us = (tf.seconds if not tf.is_calendar else 31 * 86400) * 1_000_000 * limit
        end_us = min(hi_us, lo_us + step_us)
        while True:
            start, end = _utc(lo_us), _utc(end_us)
            bars = self.source(symbol, str(tf), start, end)
            if bars.num_rows >= limit or end_us >= hi_us:
                return bars.slice(0, limit)
            end_us = min(hi_us, end_us + step_us)

    # -- Alpaca -------------------------------------------------------------------------

    def _alpaca(self, path: str, query: dict[str, str]) -> Answer:
        tf = _alpaca_timeframe(query["timeframe"])
        single = path.startswith("/v2/stocks/") and path != "/v2/stocks/bars"
        symbols = [path.split("/")[3]] if single else query["symbols"].split(",")
        limit = min(int(query.get("limit", 1000)), 10_000)
        lo, hi = parse_time(query["start"]), parse_time(query["end"])
        index, after_us = _token(query.get("page_token"), to_epoch_us(lo))
        pages: dict[str, list[dict[str, Any]]] = {}
        token = None
        while index < len(symbols) and limit > 0:
            bars = self._window(symbols[index], tf, after_us, to_epoch_us(hi), limit + 1)
            taken = bars.slice(0, limit)
            pages[symbols[index]] = _alpaca_bars(taken, tf, "/" in symbols[index])
            limit -= taken.num_rows
            if bars.num_rows > taken.num_rows:
                next_us = to_epoch_us(bars.column("ts")[taken.num_rows].as_py())
                token = _encode_token(index, next_us)
                break
            index, after_us = index + 1, to_epoch_us(lo)
        body: dict[str, Any]
        if single:
            body = {
                "bars": pages.get(symbols[0]) or None,
                "symbol": symbols[0],
                "next_page_token": token,
            }
        else:
            body = {"bars": pages, "next_page_token": token}
        return Answer(200, orjson.dumps(body))

    # -- serving ------------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        """An httpx transport answering from this mirror in process."""

        def handle(request: httpx.Request) -> httpx.Response:
            found = self.answer(request.url.path, dict(request.url.params))
            return httpx.Response(
                found.status, content=found.body, headers={"content-type": found.content_type}
            )

        return httpx.MockTransport(handle)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> MirrorServer:
        """Serve over HTTP in a background thread; ``port=0`` picks a free port."""
        return MirrorServer(self, host, port)

    def serve_websocket(self, host: str = "127.0.0.1", port: int = 0) -> StreamServer:
        """Serve the Binance websocket (``ws://…/stream?streams=…``) in background threads,
        on the price path of this mirror's source; ``port=0`` picks a free port."""
        return StreamServer(BinanceStream(self.source), host, port)


class MirrorServer:
    """A running HTTP server for a :class:`Mirror`; ``close()`` stops it."""

    def __init__(self, mirror: Mirror, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"mirror": mirror})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body are two writes: with Nagle's algorithm the body of a small answer
    # would wait for the client's delayed ACK of the headers (~40 ms on Linux)
    disable_nagle_algorithm = True
    mirror: Mirror

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        found = self.mirror.answer(url.path, dict(parse_qsl(url.query)))
        self.send_response(found.status)
        self.send_header("Content-Type", found.content_type)
        self.send_header("Content-Length", str(len(found.body)))
        self.end_headers()
        try:
            self.wfile.write(found.body)
        except (BrokenPipeError, ConnectionResetError):  # the client went away (or was killed)
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the mirror serves thousands of pages in a benchmark."""


def _not_found(path: str, symbol: str) -> Answer:
    """The answer each vendor gives for a symbol it does not know."""
    if path.startswith("/v8/"):
        error = {"code": "Not Found", "description": "No data found, symbol may be delisted"}
        return Answer(404, orjson.dumps({"chart": {"result": None, "error": error}}))
    if path.startswith("/api/"):
        return Answer(400, orjson.dumps({"code": -1121, "msg": "Invalid symbol."}))
    return Answer(400, orjson.dumps({"message": f"invalid symbol: {symbol}"}))


def _utc(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _session_open_us(labels_us: np.ndarray[Any, Any], timezone: str) -> np.ndarray[Any, Any]:
    """Yahoo stamps a daily bar at its session open: 09:30 local for stocks, 00:00 for crypto."""
    if timezone == "UTC":
        return labels_us
    zone = ZoneInfo(timezone)
    opens = [
        to_epoch_us(
            datetime.combine(_utc(int(us)).date(), datetime.min.time(), zone).replace(
                hour=9, minute=30
            )
        )
        for us in labels_us
    ]
    return np.asarray(opens, dtype=np.int64)


def _alpaca_bars(bars: pa.Table, tf: Timeframe, crypto: bool) -> list[dict[str, Any]]:
    zone = ZoneInfo("America/Chicago" if crypto else "America/New_York")
    out = []
    for bar in bars.to_pylist():
        ts: datetime = bar["ts"]
        if not tf.is_intraday:
            ts = datetime.combine(ts.date(), datetime.min.time(), zone).astimezone(UTC)
        out.append(
            {
                "t": ts.isoformat().replace("+00:00", "Z"),
                "o": bar["open"],
                "h": bar["high"],
                "l": bar["low"],
                "c": bar["close"],
                "v": bar["volume"],
                "n": bar["trades"],
                "vw": bar["vwap"],
            }
        )
    return out


def _alpaca_timeframe(text: str) -> Timeframe:
    for suffix, unit in _ALPACA.items():
        if text.endswith(suffix):
            return Timeframe.parse(f"{text[: -len(suffix)]}{unit}")
    raise ValueError(f"unknown timeframe {text!r}")


def _encode_token(index: int, after_us: int) -> str:
    return base64.urlsafe_b64encode(f"{index}|{after_us}".encode()).decode()


def _token(token: str | None, start_us: int) -> tuple[int, int]:
    if not token:
        return 0, start_us
    index, after = base64.urlsafe_b64decode(token.encode()).decode().split("|")
    return int(index), int(after)


def _exit_with_parent() -> None:
    """End this process once its parent has gone (killed without a chance to stop us)."""
    import os

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="mirror-parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    """``python -m marketlake.tools.mirror [--host] [--port] [--ws-port] [--delay]``: serve
    until stopped."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--ws-port", type=int, default=8766, help="port of the Binance websocket (-1: none)"
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait per answer")
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started this one is gone (as `marketlake demo` runs it)",
    )
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        _exit_with_parent()
    mirror = Mirror(delay_s=args.delay)
    server = mirror.serve(args.host, args.port)
    print(f"mirror serving Yahoo, Alpaca and Binance formats at {server.url}", flush=True)  # noqa: T201
    ws = mirror.serve_websocket(args.host, args.ws_port) if args.ws_port >= 0 else None
    if ws is not None:
        print(f"mirror serving the Binance websocket at {ws.url}", flush=True)  # noqa: T201
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.close()
        if ws is not None:
            ws.close()


if __name__ == "__main__":
    main()
