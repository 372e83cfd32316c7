"""The local vendor mirror: vendor formats, paging, unknown symbols, record and replay."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pyarrow as pa
import pytest

from marketlake.config import Settings
from marketlake.errors import SymbolNotFoundError
from marketlake.providers import get_provider
from marketlake.providers.alpaca import AlpacaProvider
from marketlake.tools.mirror import Mirror, UnknownSymbol, main, synthetic_source

START, END = datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 6, tzinfo=UTC)
SETTINGS = Settings(alpaca_key_id="AK", alpaca_secret_key="secret")


def only_known(symbol: str, timeframe: str, start: datetime, end: datetime) -> pa.Table:
    if symbol == "NOPE":
        raise UnknownSymbol(symbol)
    return synthetic_source(symbol, timeframe, start, end)


async def test_alpaca_multi_symbol_pages_cover_every_symbol(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(AlpacaProvider, "page_limit", 500)
    mirror = Mirror()
    provider = AlpacaProvider(SETTINGS, httpx.AsyncClient(transport=mirror.transport()))
    pages = [t async for t in provider.fetch_bars_multi(["AAPL", "MSFT"], "1m", START, END)]
    assert [p.num_rows for p in pages] == [500, 500, 500, 60]
    table = pa.concat_tables(pages)
    for symbol in ("AAPL", "MSFT"):
        mine = table.filter(pa.compute.equal(table.column("symbol"), symbol))
        assert (
            mine.column("close").to_pylist()
            == synthetic_source(symbol, "1m", START, END).column("close").to_pylist()
        )


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ("yahoo", "no such symbol at yahoo: NOPE"),
        ("alpaca", "no such symbol at alpaca: NOPE"),
        ("binance", "no such symbol at binance: NOPE"),
    ],
)
async def test_unknown_symbols_get_the_vendors_own_answer(provider: str, message: str) -> None:
    client = httpx.AsyncClient(transport=Mirror(only_known).transport())
    source = get_provider(provider, SETTINGS, client)
    source.clock = lambda: END
    with pytest.raises(SymbolNotFoundError, match=message):
        [t async for t in source.fetch_bars("NOPE", "1h", START, END)]


def test_a_repeated_request_replays_the_recorded_bytes() -> None:
    mirror = Mirror()
    query = {
        "symbol": "BTCUSDT",
        "interval": "1h",
        "startTime": "1709510400000",
        "endTime": "1709596799999",
        "limit": "1000",
    }
    first = mirror.answer("/api/v3/klines", query)
    again = mirror.answer("/api/v3/klines", dict(reversed(query.items())))
    assert again is first
    assert (mirror.requests, len(mirror.recorded)) == (2, 1)


def test_the_http_server_serves_what_the_transport_does() -> None:
    mirror = Mirror()
    server = mirror.serve()
    try:
        path = "/v8/finance/chart/AAPL?period1=1709510400&period2=1709683200&interval=1d"
        over_http = httpx.get(server.url + path)
        in_process = mirror.answer("/v8/finance/chart/AAPL", dict(httpx.URL(path).params))
    finally:
        server.close()
    assert over_http.status_code == 200
    assert over_http.content == in_process.body
    assert over_http.json()["chart"]["result"][0]["timestamp"] == [1709562600, 1709649000]


def test_unknown_paths_and_bad_queries_are_refused() -> None:
    mirror = Mirror()
    assert mirror.answer("/v3/other", {}).status == 404
    missing = mirror.answer("/api/v3/klines", {"symbol": "BTCUSDT"})
    assert (missing.status, missing.body) == (400, b'{"message":"bad request: \'interval\'"}')


def test_main_serves_until_interrupted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupt(self: object, timeout: float | None = None) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("threading.Thread.join", interrupt)
    main(["--port", "0", "--ws-port", "0"])
    out = capsys.readouterr().out
    assert "mirror serving Yahoo, Alpaca and Binance formats at http://127.0.0.1:" in out
    assert "mirror serving the Binance websocket at ws://127.0.0.1:" in out


def test_the_mirror_stops_when_its_parent_is_gone() -> None:
    """`--exit-with-parent` (as the demo starts it): no orphan mirror when the demo dies."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    spawn = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-m', 'marketlake.tools.mirror', '--port', '0',"
        " '--ws-port', '0', '--exit-with-parent'], stdout=subprocess.PIPE, text=True)\n"
        "p.stdout.readline(); p.stdout.readline()\n"
        "print(p.pid, flush=True)\n"
    )
    parent = subprocess.run(
        [sys.executable, "-c", spawn], capture_output=True, text=True, timeout=120, check=True
    )
    pid = int(parent.stdout.split()[-1])

    def alive() -> bool:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False
        return "\nState:\tZ" not in status  # a zombie has exited

    deadline = time.monotonic() + 30
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive():
        os.kill(pid, 9)
        raise AssertionError("the mirror outlived its parent")
