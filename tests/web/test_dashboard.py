"""The dashboard in headless Chromium (Debian's ``chromium`` driven by Playwright).

A real API server runs in a thread on a loopback port over a DuckDB store with
known synthetic data; screenshots land in ``tests/artifacts/``.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from marketlake.api import create_app
from marketlake.api.keys import create_key
from marketlake.config import Settings
from marketlake.providers.synthetic import generate_bars
from marketlake.schema import Instrument
from marketlake.store import open_store
from marketlake.web import CHART_LIBRARY
from tests.conftest import REQUIRE_SERVICES

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
START, END = datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 16, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """uvicorn serving ``create_app`` in a background thread until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.port = _free_port()
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
        )
        self.app = config.app
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()

    def call(self, coro: Any) -> Any:
        """Run ``coro`` on the server's event loop (to publish on its in-process bus)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the API server did not start within 20 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _fill(uri: str) -> dict[str, int]:
    store = open_store(uri)
    counts = {}
    try:
        store.add_instrument(Instrument(symbol="AAPL", name="Apple (synthetic)"))
        store.add_instrument(Instrument(symbol="BTCUSDT", asset_class="crypto", timezone="UTC"))
        for tf in ("1h", "1d"):
            for symbol in ("AAPL", "BTCUSDT"):
                store.write_bars(generate_bars(symbol, tf, START, END))
                counts[f"{symbol}/{tf}"] = store.count_bars(symbol, tf)
    finally:
        store.close()
    return counts


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        message = "Debian's chromium is not installed (make test installs it)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    if not CHART_LIBRARY.exists():
        pytest.fail(f"{CHART_LIBRARY} is missing: run `make install`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def filled(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerThread, dict[str, int]]]:
    uri = f"duckdb:///{tmp_path_factory.mktemp('dash')}/dash.duckdb"
    counts = _fill(uri)
    store = open_store(uri)
    try:
        counts["key"] = create_key(store, "dashboard-test", "read,write")[1]  # type: ignore[assignment]
    finally:
        store.close()
    with ServerThread(Settings(store=uri, api_rate_limit_per_minute=0)) as server:
        yield server, counts


def _open(browser: object, url: str, name: str) -> tuple[object, list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    return page, errors


def _until(page: object, expression: str, timeout: float = 30_000) -> None:
    """Wait until ``expression`` is true in the page. Polled from here: Playwright's
    ``wait_for_function`` evaluates strings with ``eval``, which the dashboard's CSP
    (rightly) forbids."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout / 1000:.0f} s: {expression}")
        time.sleep(0.05)


def _shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_page_loads_and_draws_every_stored_candle(browser: object, filled: tuple) -> None:
    server, counts = filled
    page, errors = _open(browser, f"{server.url}/#AAPL/1h", "load")
    page.wait_for_selector("#chart[data-candles]:not([data-candles='0'])")
    assert int(page.get_attribute("#chart", "data-candles")) == counts["AAPL/1h"]
    assert page.inner_text("#kpi-last") not in ("", "–")
    _shot(page, "dashboard-aapl-1h")
    assert errors == []


def test_switching_timeframe_fetches_and_redraws(browser: object, filled: tuple) -> None:
    server, counts = filled
    page, errors = _open(browser, f"{server.url}/#AAPL/1h", "switch")
    page.wait_for_selector("#chart[data-candles]:not([data-candles='0'])")
    with page.expect_response(lambda r: "/api/v1/bars/AAPL?" in r.url and "timeframe=1d" in r.url):
        page.click("[data-tf='1d']")
    _until(page, f"document.querySelector('#chart').dataset.candles === '{counts['AAPL/1d']}'")
    assert page.get_attribute("[data-tf='1d']", "aria-checked") == "true"
    assert errors == []


def test_unknown_symbol_shows_what_to_do(browser: object, filled: tuple) -> None:
    server, _ = filled
    page, _ = _open(browser, f"{server.url}/#NOPE/1h", "unknown")
    page.wait_for_selector("#chart-empty:not([hidden])")
    assert "marketlake ingest" in page.inner_text("#chart-empty")


def test_empty_store_explains_how_to_load_data(browser: object, tmp_path: Path) -> None:
    with ServerThread(
        Settings(store=f"duckdb:///{tmp_path}/empty.duckdb", api_rate_limit_per_minute=0)
    ) as server:
        page, errors = _open(browser, server.url, "empty")
        page.wait_for_selector("#chart-empty:not([hidden])")
        assert "marketlake demo" in page.inner_text("#chart-empty")
        _shot(page, "dashboard-empty-store")
        assert errors == []


def test_a_live_trade_updates_the_last_price(browser: object, filled: tuple) -> None:
    import pyarrow as pa

    from marketlake.schema import normalize_trades
    from marketlake.stream.events import Batch

    server, _ = filled
    page, errors = _open(browser, f"{server.url}/#BTCUSDT/1h", "live")
    page.wait_for_selector("#chart[data-candles]:not([data-candles='0'])")
    page.check("#live-toggle")
    _until(page, "document.querySelector('#conn').textContent === 'live'")
    trades = normalize_trades(
        pa.table(
            {
                "ts": pa.array([END], pa.timestamp("us", tz="UTC")),
                "price": [123456.5],
                "size": [0.25],
                "side": ["buy"],
                "trade_id": ["t-1"],
            }
        ),
        symbol="BTCUSDT",
        source="test",
    )
    server.call(server.app.state.ctx.bus.publish([Batch("trade", "BTCUSDT", trades)]))
    _until(page, "document.querySelector('#kpi-last').textContent === '123,456.50'")
    _shot(page, "dashboard-live-update")
    assert errors == []


def test_the_demo_link_opens_its_symbol_with_live_on(browser: object, filled: tuple) -> None:
    """`marketlake demo` prints `/#key=…&symbol=BTCUSDT&live=1` when it streams: the page
    shows the symbol and turns Live on by itself."""
    server, _ = filled
    page, errors = _open(browser, f"{server.url}/#symbol=BTCUSDT&live=1", "link")
    page.wait_for_selector("#chart[data-candles]:not([data-candles='0'])")
    _until(page, "document.querySelector('#conn').textContent === 'live'")
    assert page.is_checked("#live-toggle")  # type: ignore[attr-defined]
    assert page.input_value("#symbol-input") == "BTCUSDT"  # type: ignore[attr-defined]
    assert page.url.endswith("/#BTCUSDT/1h")  # type: ignore[attr-defined]
    assert errors == []


def test_a_new_alert_appears_in_the_log(browser: object, filled: tuple) -> None:
    from marketlake.stream.events import ALERTS_TOPIC

    server, _ = filled
    page, errors = _open(browser, f"{server.url}/#BTCUSDT/1h", "alerts")
    _until(page, "document.querySelector('#alerts-state').textContent === 'live'")
    alert = {
        "id": "a-1",
        "rule_id": "btc-high",
        "symbol": "BTCUSDT",
        "ts": "2024-03-15T12:00:00Z",
        "kind": "price_above",
        "value": 70000.0,
        "message": "price 70000 above 69000",
        "seq": 1,
    }
    server.call(server.app.state.ctx.bus.publish_event(ALERTS_TOPIC, alert))
    page.wait_for_selector("#alert-log [data-alert-id='a-1']")
    assert "price 70000 above 69000" in page.inner_text("#alert-log")
    assert errors == []


def test_a_backtest_run_shows_its_equity_curve_and_statistics(
    browser: object, filled: tuple
) -> None:
    server, counts = filled
    page, errors = _open(browser, f"{server.url}/#key={counts['key']}", "backtest")
    page.wait_for_selector("#chart[data-candles]:not([data-candles='0'])")
    page.fill("#bt-params", "fast=5 slow=12")
    page.click("#bt-form button[type=submit]")
    page.wait_for_selector("#bt-chart[data-points]", timeout=60_000)
    assert int(page.get_attribute("#bt-chart", "data-points")) == counts["AAPL/1h"]
    assert "sharpe" in page.inner_text("#bt-stats")
    _shot(page, "dashboard-backtest")
    assert errors == []


def test_a_portfolio_backtest_shows_equity_and_weights(browser: object, filled: tuple) -> None:
    server, counts = filled
    page, errors = _open(browser, f"{server.url}/#key={counts['key']}", "portfolio")
    page.goto(f"{server.url}/#AAPL/1d")
    page.wait_for_selector("#chart[data-candles]:not([data-candles='0'])")
    page.select_option("#bt-strategy", "equal_weight")
    page.fill("#bt-symbols", "AAPL, BTCUSDT")
    page.click("#bt-form button[type=submit]")
    _until(
        page,
        "document.querySelector('#bt-state').textContent.startsWith('run ') || "
        "document.querySelector('#bt-state').textContent === 'failed'",
        timeout=60_000,
    )
    assert page.inner_text("#bt-state").startswith("run "), page.inner_text("#banner")
    weights = page.inner_text("#bt-weights")
    assert "AAPL" in weights
    assert "BTCUSDT" in weights
    # a union of AAPL's sessions and BTCUSDT's every day
    assert int(page.get_attribute("#bt-chart", "data-points")) >= counts["BTCUSDT/1d"]
    assert "turnover" in page.inner_text("#bt-stats")
    _shot(page, "dashboard-portfolio")
    assert errors == []


def test_a_backtest_without_a_key_says_how_to_get_one(browser: object, filled: tuple) -> None:
    server, _ = filled
    page, _ = _open(browser, f"{server.url}/#AAPL/1h", "backtest-nokey")
    page.evaluate("localStorage.clear()")
    page.reload()
    page.wait_for_selector("#chart[data-candles]:not([data-candles='0'])")
    page.click("#bt-form button[type=submit]")
    page.wait_for_selector("#banner:not([hidden])")
    assert "marketlake keys create" in page.inner_text("#banner")


def test_the_dashboard_runs_under_its_content_security_policy(
    browser: object, filled: tuple
) -> None:
    server, counts = filled
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page.add_init_script(
        "window.__csp = []; document.addEventListener('securitypolicyviolation', "
        "(e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    response = page.goto(f"{server.url}/#AAPL/1h")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy
    assert "frame-ancestors 'none'" in policy
    page.wait_for_selector("#chart[data-candles]:not([data-candles='0'])")
    with page.expect_response(lambda r: "timeframe=1d" in r.url):
        page.click("[data-tf='1d']")
    _until(page, f"document.querySelector('#chart').dataset.candles === '{counts['AAPL/1d']}'")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__csp") == []
    assert [e for e in errors if "Content Security Policy" in e] == []
