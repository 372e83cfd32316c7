"""Dashboard speed in headless Chromium: first chart of 5,000 candles and a timeframe switch.

Targets (issue 9): 5,000 candles drawn <= 1 s after navigation; timeframe switch
<= 300 ms. The live-update latency is measured by the streaming part once its
SSE routes exist. Times come from the page's own ``performance.now()``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

RUNS = 5


def main(quick: bool = False) -> None:
    from playwright.sync_api import sync_playwright
    from tests.test_dashboard import CHROMIUM, ServerThread

    from marketlake.config import Settings
    from marketlake.providers.synthetic import generate_bars
    from marketlake.schema import Instrument
    from marketlake.store import open_store

    if not Path(CHROMIUM).exists():
        print("bench_dashboard: chromium missing; run `make browser`")
        return
    tmp = tempfile.mkdtemp()
    uri = f"duckdb:///{tmp}/bench.duckdb"
    store = open_store(uri)
    store.add_instrument(Instrument(symbol="BTCUSDT", asset_class="crypto", timezone="UTC"))
    end = datetime(2024, 9, 1, tzinfo=UTC)
    bars = generate_bars("BTCUSDT", "1h", end - timedelta(hours=5000), end)
    store.write_bars(bars)
    store.write_bars(generate_bars("BTCUSDT", "4h", end - timedelta(hours=5000), end))
    store.close()
    drawn, switch = [], []
    with ServerThread(Settings(store=uri, api_rate_limit_per_minute=0)) as server, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu",
                                           "--disable-background-networking"])
        for _ in range(2 if quick else RUNS):
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{server.url}/#BTCUSDT/1h")
            page.wait_for_function("window.__ml.timings.chartDrawnAt !== undefined",
                                   timeout=30_000)
            candles = int(page.get_attribute("#chart", "data-candles") or 0)
            drawn.append(page.evaluate("window.__ml.timings.chartDrawnAt"))
            page.click("[data-tf='4h']")
            page.wait_for_function("window.__ml.timings.timeframeSwitchMs !== undefined")
            switch.append(page.evaluate("window.__ml.timings.timeframeSwitchMs"))
            page.close()
        browser.close()
    print(f"dashboard: {candles:,} candles drawn after navigation: median "
          f"{statistics.median(drawn):.0f} ms (target <= 1000 ms, ratio to target "
          f"{statistics.median(drawn) / 1000:.2f})")
    print(f"dashboard: timeframe switch 1h -> 4h: median {statistics.median(switch):.0f} ms "
          f"(target <= 300 ms, ratio to target {statistics.median(switch) / 300:.2f})")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
