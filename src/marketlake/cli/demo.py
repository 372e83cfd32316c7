"""``marketlake demo`` (the offline tour) and ``marketlake run-simple``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from marketlake.cli.app import State, state
from marketlake.cli.output import console, emit_json, err_console, redact, show_table

# The demo's instruments as fields (built into Instruments when the demo runs: the CLI
# imports no pydantic model or Arrow schema to show its help).
DEMO_INSTRUMENTS: tuple[dict[str, str], ...] = (
    {
        "symbol": "AAPL",
        "name": "Apple Inc. (synthetic)",
        "asset_class": "stock",
        "exchange": "XNAS",
    },
    {
        "symbol": "MSFT",
        "name": "Microsoft Corp. (synthetic)",
        "asset_class": "stock",
        "exchange": "XNAS",
    },
    {
        "symbol": "SPY",
        "name": "SPDR S&P 500 ETF (synthetic)",
        "asset_class": "etf",
        "exchange": "ARCX",
    },
    {
        "symbol": "BTCUSDT",
        "name": "Bitcoin / Tether (synthetic)",
        "asset_class": "crypto",
        "exchange": "BINANCE",
        "currency": "USDT",
        "timezone": "UTC",
    },
    {
        "symbol": "ETHUSDT",
        "name": "Ether / Tether (synthetic)",
        "asset_class": "crypto",
        "exchange": "BINANCE",
        "currency": "USDT",
        "timezone": "UTC",
    },
)


def demo_range(days: int) -> tuple[datetime, datetime]:
    """The last ``days`` whole UTC days before today."""
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return end - timedelta(days=days), end


def demo(
    ctx: typer.Context,
    days: Annotated[int, typer.Option(help="Days of 1-minute bars to generate.")] = 30,
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve API and dashboard after.")
    ] = True,
    host: Annotated[str, typer.Option(help="Bind address when serving.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port when serving.")] = 8000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    live: Annotated[
        bool,
        typer.Option(
            "--live/--no-live",
            help="When serving, stream live BTCUSDT and ETHUSDT trades from the offline "
            "mirror's Binance websocket (candles form, metrics move, alerts fire).",
        ),
    ] = True,
) -> None:
    """Offline tour: synthetic 1-minute data for 5 symbols, stored, summarised, then served
    with live crypto trades from a local Binance mirror (no network needed).

    The live part runs `marketlake serve --stream binance:BTCUSDT,ETHUSDT` against the
    mirror (`python -m marketlake.tools.mirror`) on loopback; alerts come from
    config/alert_rules.yml and P&L from config/portfolio.yml. Ctrl-C stops everything.
    """
    import asyncio

    st = state(ctx)
    store = st.store
    from marketlake.schema import Instrument

    for fields in DEMO_INSTRUMENTS:
        instrument = Instrument.model_validate(fields)
        if store.instrument(instrument.symbol, missing_ok=True) is None:
            store.add_instrument(instrument)
    start, end = demo_range(days)
    say = err_console if as_json else console  # --json keeps stdout for the JSON
    symbols = [i["symbol"] for i in DEMO_INSTRUMENTS]
    say.print(
        f"[bold]1/5[/] loading {days} days of synthetic 1-minute bars for "
        f"{len(DEMO_INSTRUMENTS)} symbols into {redact(st.settings.store)}"
    )
    from marketlake.ingest.jobs import run_ingest
    from marketlake.providers.synthetic import SyntheticProvider

    provider = SyntheticProvider(st.settings)
    result = asyncio.run(run_ingest(store, provider, symbols, "1m", start, end, rollup=False))
    say.print(f"      job {result.job_id}: {result.status} in {result.seconds:.1f}s")
    _quality_and_rollups(st, symbols, as_json=as_json)
    columns = ("symbol", "timeframe", "bars", "first", "last")
    if as_json:
        emit_json(
            {
                "job_id": result.job_id,
                "status": result.status,
                "bars": [{c: row[c] for c in columns} for row in store.bar_summary()],
            }
        )
    else:
        show_table(store.bar_summary(), columns, title="Stored bars", numeric=("bars",))
    if not as_json:
        _sample_backtest(st)
    if serve and live:
        _serve_live(st, host, port, end)
    elif serve:
        from marketlake.cli.serve import run_server

        _say_next(st, host, port)
        run_server(st.settings, host=host, port=port, store=store, log_format="console")


LIVE_SYMBOLS = ("BTCUSDT", "ETHUSDT")


def _say_next(st: State, host: str, port: int, *, live: bool = False) -> None:
    key = _dashboard_key(st)
    link = f"#key={key}" + (f"&symbol={LIVE_SYMBOLS[0]}&live=1" if live else "")
    console.print(
        f"[bold]next[/] the dashboard is at http://{host}:{port}/{link} (the key lets it "
        f"run backtests) and the API docs at http://{host}:{port}/docs; Ctrl-C stops "
        "(`--no-serve` skips serving)",
        highlight=False,
        soft_wrap=True,
    )


def _serve_live(st: State, host: str, port: int, synthetic_end: datetime) -> None:
    """Serve with a live feed from the offline Binance mirror (REST and websocket on
    loopback): today's minutes so far come from its REST klines, then its websocket's
    trades and klines, on the same price path, stream into the server."""
    from dataclasses import replace

    from marketlake.cli.serve import prepare_live, run_server

    with _mirror() as (rest_url, ws_url):
        settings = st.settings.model_copy(
            update={"binance_url": rest_url, "binance_ws_url": ws_url, "rate_limit": False}
        )
        settings, live = prepare_live(
            settings, stream="binance:" + ",".join(LIVE_SYMBOLS), schedule=None, alerts=None
        )
        assert live is not None
        live = replace(live, windows=None)  # the demo streams at any hour
        _top_up(st, settings, synthetic_end)
        rules = settings.alert_rules_path()
        console.print(
            f"[bold]live[/] {', '.join(LIVE_SYMBOLS)} trades from the offline Binance mirror "
            f"({ws_url}); alert rules: "
            + (str(rules) if rules.exists() else f"none ({rules} not found)"),
            highlight=False,
            soft_wrap=True,
        )
        _say_next(st, host, port, live=True)
        run_server(settings, host=host, port=port, store=st.store, log_format="console", live=live)


@contextlib.contextmanager
def _mirror(timeout_s: float = 60.0) -> Iterator[tuple[str, str]]:
    """The offline vendor mirror (``python -m marketlake.tools.mirror``) on loopback, free
    ports, as a child process: (REST URL, websocket URL). Stopped on the way out."""
    import queue
    import subprocess
    import sys
    import threading

    from marketlake.errors import MarketLakeError

    command = [sys.executable, "-m", "marketlake.tools.mirror", "--port", "0", "--ws-port", "0"]
    command.append("--exit-with-parent")  # even if the demo is killed outright
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # Ctrl-C reaches the demo, which stops the mirror last
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:  # until the mirror's stdout closes (it stopped)
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, name="marketlake-mirror-out", daemon=True).start()
    try:
        urls: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        while len(urls) < 2 and (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if not line:
                break
            for scheme in ("http", "ws"):
                if f" at {scheme}://" in line:
                    urls[scheme] = line.rsplit(" at ", 1)[1].strip()
        if len(urls) < 2:
            code = process.poll()
            how = f"exited with code {code}" if code is not None else f"within {timeout_s:g} s"
            raise MarketLakeError(
                f"the offline mirror did not start ({how}); run "
                "`python -m marketlake.tools.mirror` to see why, or use `demo --no-live`"
            )
        yield urls["http"], urls["ws"]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _top_up(st: State, settings: Any, since: datetime) -> None:
    """Today's minutes of the live symbols from the mirror's REST klines, so the chart
    runs on without a gap into the live candles."""
    import asyncio

    from marketlake.ingest.jobs import run_ingest
    from marketlake.providers.binance.rest import BinanceProvider

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    if now <= since:
        return
    provider = BinanceProvider(settings)

    async def fetch() -> Any:
        try:
            return await run_ingest(
                st.store, provider, list(LIVE_SYMBOLS), "1m", since, now, rollup=False
            )
        finally:
            await provider.aclose()

    result = asyncio.run(fetch())
    console.print(
        f"[bold]live[/] {result.rows:,} minutes of today so far from the mirror's Binance "
        f"REST klines (job {result.job_id}: {result.status})",
        highlight=False,
    )


def _sample_backtest(st: State) -> None:
    """An SMA crossover on the demo's hourly BTCUSDT bars (24/7), stored like any backtest."""
    from marketlake.backtest.engine import BacktestConfig
    from marketlake.backtest.runs import run_backtest
    from marketlake.cli.output import warn
    from marketlake.errors import MarketLakeError

    try:  # fractional units: 10,000 of cash buys a fraction of a bitcoin
        result = run_backtest(
            st.store,
            "sma_cross",
            {"fast": 10, "slow": 30},
            symbols=["BTCUSDT"],
            timeframe="1h",
            config=BacktestConfig(fractional=True),
        )
    except MarketLakeError as exc:
        warn(f"5/5 sample backtest skipped: {exc.message}")
        return
    stats = result.stats

    def num(name: str) -> str:
        value = stats.get(name)
        return "n/a" if value is None else f"{value:.2f}"

    console.print(
        f"[bold]5/5[/] sample backtest: SMA 10/30 on BTCUSDT 1h (id {result.id}): return "
        f"{num('total_return_pct')} % vs buy & hold {num('buy_hold_return_pct')} %, "
        f"{stats.get('trades')} trades, Sharpe {num('sharpe')}; see it with "
        f"`marketlake backtest run --strategy sma_cross --symbol BTCUSDT -t 1h --fractional`",
        highlight=False,
    )


def _dashboard_key(st: State) -> str:
    """A fresh read/write key for the dashboard (the previous demo key is revoked)."""
    from marketlake.api.keys import create_key, list_keys, revoke_key

    for key in list_keys(st.store, include_revoked=False):
        if key.name == "demo-dashboard":
            revoke_key(st.store, key.id)
    return create_key(st.store, "demo-dashboard", "read,write")[1]


def _quality_and_rollups(st: State, symbols: list[str], *, as_json: bool = False) -> None:
    """Steps 2 and 3 of the demo: validate the minutes, then roll them up."""
    from marketlake.ingest.rollups import aggregate_store
    from marketlake.quality.checks import validate_store
    from marketlake.quality.policy import QualityPolicy

    say = err_console if as_json else console  # --json keeps stdout for the JSON
    began = time.perf_counter()
    report = validate_store(
        st.store, symbols, ["1m"], policy=QualityPolicy.from_settings(st.settings)
    )
    say.print(
        f"[bold]2/5[/] validated {report.rows:,} bars in "
        f"{time.perf_counter() - began:.1f}s: {report.errors} errors, "
        f"{report.warnings} warnings (report {report.id})"
    )
    if not as_json:
        show_table(
            [{**s.as_dict(), "score": f"{100 * (s.score or 0):.2f}%"} for s in report.series],
            ("symbol", "timeframe", "bars", "expected", "missing", "errors", "warnings", "score"),
            title="Data quality",
            numeric=("bars", "expected", "missing", "errors", "warnings", "score"),
        )
    began = time.perf_counter()
    rolled = aggregate_store(st.store, symbols, "1m", st.settings.rollup_timeframes)
    partial = sorted({f"{r.symbol} {r.timeframe}" for r in rolled if r.partial})
    say.print(
        f"[bold]3/5[/] rolled up to {', '.join(st.settings.rollup_timeframes)} in "
        f"{time.perf_counter() - began:.1f}s ({sum(r.bars for r in rolled):,} bars; "
        f"still forming: {', '.join(partial) or 'none'})"
    )
    say.print("[bold]4/5[/] summary")


def run_simple(
    symbol: Annotated[str, typer.Option(help="Synthetic symbol.")] = "AAPL",
    fast: Annotated[int, typer.Option(help="Fast moving-average window.")] = 20,
    slow: Annotated[int, typer.Option(help="Slow moving-average window.")] = 50,
    days: Annotated[int, typer.Option(help="Days of synthetic hourly bars.")] = 365,
    as_json: Annotated[bool, typer.Option("--json", help="Statistics and trades as JSON.")] = False,
) -> None:
    """SMA-crossover backtest on synthetic hourly data with the backtest engine; needs no store."""
    from marketlake.backtest.runs import run_backtest
    from marketlake.cli.backtest import print_result

    start, end = demo_range(days)
    result = run_backtest(
        None,
        "sma_cross",
        {"fast": fast, "slow": slow},
        symbols=[symbol],
        timeframe="1h",
        start=start,
        end=end,
        synthetic=True,
        save=False,
    )
    print_result(result, as_json=as_json)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
    app.command("run-simple")(run_simple)
