"""``marketlake demo`` (the offline tour) and ``marketlake run-simple``."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from marketlake.cli.app import State, state
from marketlake.cli.output import console, emit_json, err_console, show_table
from marketlake.config import redact

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
) -> None:
    """Offline tour: synthetic 1-minute data for 5 symbols, stored, summarised (then served)."""
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
    if serve:
        from marketlake.cli.serve import run_server

        key = _dashboard_key(st)
        console.print(
            f"[bold]next[/] the dashboard is at http://{host}:{port}/#key={key} (the key lets it "
            f"run backtests) and the API docs at http://{host}:{port}/docs; Ctrl-C stops "
            "(`--no-serve` skips serving)",
            highlight=False,
            soft_wrap=True,
        )
        run_server(st.settings, host=host, port=port, store=store, log_format="console")


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
