"""``marketlake backtest run | portfolio | sweep | walk-forward | strategies | show | list``.

The backtest modules are imported inside the commands, so that other
commands do not pay for them at start-up.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from marketlake.cli.app import state
from marketlake.cli.output import console, emit_json, err_console, show_table, stderr_isatty
from marketlake.errors import InputError

if TYPE_CHECKING:
    pass


if TYPE_CHECKING:
    from marketlake.backtest.data import Bars
    from marketlake.backtest.engine import BacktestConfig, BacktestResult
    from marketlake.cli.app import State

backtest_group = typer.Typer(
    help="Backtest strategies on stored or synthetic bars.", no_args_is_help=True
)


class FillAt(StrEnum):
    open = "open"
    close = "close"


class EngineName(StrEnum):
    marketlake = "marketlake"
    nautilus = "nautilus"


class SizingMode(StrEnum):
    all_in = "all-in"
    fraction = "fraction"
    units = "units"


Strategy = Annotated[
    str,
    typer.Option("--strategy", "-s", help="Strategy name; see `marketlake backtest strategies`."),
]
Symbols = Annotated[list[str], typer.Option("--symbol", help="Symbol (repeat, or A,B,C).")]
TimeframeOpt = Annotated[str, typer.Option("--timeframe", "-t", help="Bar size: 1m, 1h, 1d …")]
Start = Annotated[str | None, typer.Option(help="First bar (inclusive), ISO date or time, UTC.")]
End = Annotated[str | None, typer.Option(help="End (exclusive).")]
Period = Annotated[str | None, typer.Option(help="Instead of --start: 30d, 1y … back from --end.")]
Cash = Annotated[float, typer.Option(help="Initial cash.")]
Commission = Annotated[
    float, typer.Option(help="Commission per fill in basis points (10 = 0.1 %).")
]
CommissionFixed = Annotated[float, typer.Option(help="Fixed commission per fill, in cash.")]
Slippage = Annotated[float, typer.Option(help="Slippage per fill in basis points.")]
Fill = Annotated[FillAt, typer.Option(help="Fill at the next bar's open or this bar's close.")]
Sizing = Annotated[SizingMode, typer.Option(help="all-in, a fraction of equity, or fixed units.")]
Size = Annotated[
    float, typer.Option(help="The fraction (--sizing fraction) or the units (--sizing units).")
]
Fractional = Annotated[bool, typer.Option("--fractional", help="Allow fractional units.")]
Short = Annotated[bool, typer.Option("--allow-short", help="Take short positions too.")]
StopLoss = Annotated[float | None, typer.Option(help="Stop-loss in % below (above) the entry.")]
TakeProfit = Annotated[float | None, typer.Option(help="Take-profit in % from the entry.")]
Synthetic = Annotated[
    bool, typer.Option("--synthetic", help="Use generated bars instead of the store.")
]
Seed = Annotated[int, typer.Option(help="Seed of the synthetic bars.")]
NoSave = Annotated[bool, typer.Option("--no-save", help="Do not store the result.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _config(
    cash: float,
    commission: float,
    commission_fixed: float,
    slippage: float,
    fill: FillAt,
    sizing: SizingMode,
    size: float,
    fractional: bool,
    allow_short: bool,
    stop_loss: float | None,
    take_profit: float | None,
) -> BacktestConfig:
    from marketlake.backtest.engine import BacktestConfig

    return BacktestConfig(
        cash=cash,
        commission_bps=commission,
        commission_fixed=commission_fixed,
        slippage_bps=slippage,
        fill=fill.value,
        fractional=fractional,
        allow_short=allow_short,
        sizing=sizing.value.replace("-", "_"),  # type: ignore[arg-type]
        size=size,
        stop_loss_pct=stop_loss,
        take_profit_pct=take_profit,
    )


def parse_params(items: list[str] | None) -> dict[str, str]:
    """``["fast=10", "slow=30"]`` as a dict; a malformed item is an input error."""
    params: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InputError(
                f"--param {item!r}: write NAME=VALUE, e.g. --param fast=10", param="param"
            )
        params[name.strip()] = value.strip()
    return params


def _symbols(items: list[str]) -> list[str]:
    names = [s.strip() for item in items for s in item.split(",") if s.strip()]
    if not names:
        raise InputError("give at least one --symbol", param="symbol")
    return names


def _range(
    start: str | None, end: str | None, period: str | None, synthetic: bool
) -> tuple[datetime | None, datetime | None]:
    from marketlake.timeseries.times import resolve_range

    if synthetic and not (start or period):
        raise InputError("--synthetic needs --start (and --end) or --period", param="start")
    return resolve_range(start, end, period, required=synthetic)


@backtest_group.command("run")
def run(
    ctx: typer.Context,
    strategy: Strategy,
    symbol: Symbols,
    timeframe: TimeframeOpt = "1d",
    start: Start = None,
    end: End = None,
    period: Period = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Strategy parameter NAME=VALUE.")
    ] = None,
    cash: Cash = 10_000.0,
    commission: Commission = 0.0,
    commission_fixed: CommissionFixed = 0.0,
    slippage: Slippage = 0.0,
    fill: Fill = FillAt.open,
    sizing: Sizing = SizingMode.all_in,
    size: Size = 1.0,
    fractional: Fractional = False,
    allow_short: Short = False,
    stop_loss: StopLoss = None,
    take_profit: TakeProfit = None,
    synthetic: Synthetic = False,
    seed: Seed = 7,
    report: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report.")] = None,
    engine: Annotated[
        EngineName,
        typer.Option(
            help="marketlake, or nautilus: the SMA cross in NautilusTrader's engine "
            "(the nautilus extra; long only, fills at the close, no costs)."
        ),
    ] = EngineName.marketlake,
    on_hole: Annotated[
        str,
        typer.Option(
            "--on-hole",
            help="A stretch without bars far longer than the timeframe's closures (over 7 "
            "days and 5 bars): report (run and say so) or refuse (exit 2).",
        ),
    ] = "report",
    no_save: NoSave = False,
    as_json: AsJson = False,
) -> None:
    """Backtest one strategy and print its statistics (or, with --json, statistics and trades).

    Example: `marketlake backtest run -s sma_cross --symbol AAPL -t 1h --start 2024-01-02
    --param fast=10 --param slow=40 --commission 5 --report aapl.html`
    """
    from marketlake.backtest.runs import run_backtest

    st = state(ctx)
    if engine is EngineName.nautilus:
        plain = (
            commission == 0 and commission_fixed == 0 and slippage == 0
            and sizing is SizingMode.all_in and not allow_short and not fractional
            and stop_loss is None and take_profit is None and report is None
        )  # fmt: skip
        if strategy != "sma_cross" or not plain:
            raise InputError(
                "--engine nautilus runs sma_cross only, all-in whole units, long only, "
                "without costs, stops or a report (the rules both engines share)",
                param="engine",
            )
        names = _symbols(symbol)
        if len(names) != 1:
            raise InputError("--engine nautilus runs one --symbol", param="symbol")
        begin, stop = _range(start, end, period, synthetic)
        _run_nautilus(st, names[0], timeframe, begin, stop, parse_params(param), cash,
                      synthetic, seed, as_json)  # fmt: skip
        return
    config = _config(
        cash,
        commission,
        commission_fixed,
        slippage,
        fill,
        sizing,
        size,
        fractional,
        allow_short,
        stop_loss,
        take_profit,
    )
    begin, stop = _range(start, end, period, synthetic)
    result = run_backtest(
        None if synthetic and no_save else st.store,
        strategy,
        parse_params(param),
        symbols=_symbols(symbol),
        timeframe=timeframe,
        start=begin,
        end=stop,
        config=config,
        synthetic=synthetic,
        seed=seed,
        save=not no_save,
        on_hole=on_hole,
    )
    print_result(result, as_json=as_json)
    for note in result.notes:
        err_console.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)
    if report is not None:
        from marketlake.backtest.report import write_report

        write_report(result, st.path(report))
        err_console.print(f"report written to {report}", highlight=False)


class RebalanceAt(StrEnum):
    bar = "bar"
    daily = "daily"
    weekly = "weekly"
    monthly = "monthly"
    signal = "signal"


@backtest_group.command("portfolio")
def portfolio(
    ctx: typer.Context,
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            "-s",
            help="equal_weight, inverse_volatility, momentum_top_n, fixed_mix, "
            "or any signal strategy (each symbol gets 1/N).",
        ),
    ],
    symbol: Symbols,
    timeframe: TimeframeOpt = "1d",
    start: Start = None,
    end: End = None,
    period: Period = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Strategy parameter NAME=VALUE (mix=SPY=0.6,TLT=0.4)."),
    ] = None,
    rebalance: Annotated[
        RebalanceAt,
        typer.Option(
            help="When to rebalance: every bar, each day, week, month, "
            "or when a target changes (signal)."
        ),
    ] = RebalanceAt.monthly,
    drift_band: Annotated[
        float | None,
        typer.Option(help="Also rebalance when a weight strays more than this (0.05 = 5 points)."),
    ] = None,
    cash: Cash = 10_000.0,
    commission: Commission = 0.0,
    commission_fixed: CommissionFixed = 0.0,
    slippage: Slippage = 0.0,
    fill: Fill = FillAt.open,
    fractional: Fractional = False,
    allow_short: Short = False,
    max_gross: Annotated[
        float, typer.Option(help="Largest sum of absolute weights (1 = no leverage).")
    ] = 1.0,
    weights_out: Annotated[
        Path | None,
        typer.Option(
            "--weights-out", help="Write units and weights per bar and symbol (.csv or .parquet)."
        ),
    ] = None,
    adjusted: Annotated[
        bool,
        typer.Option(
            "--adjusted",
            help="Trade on split- and dividend-adjusted bars (the stored corporate actions).",
        ),
    ] = False,
    synthetic: Synthetic = False,
    seed: Seed = 7,
    no_save: NoSave = False,
    as_json: AsJson = False,
) -> None:
    """Backtest a portfolio: several symbols, one cash account, target weights, rebalancing.

    Example: `marketlake backtest portfolio -s momentum_top_n --symbol AAPL,MSFT,NVDA,SPY
    -t 1d --start 2020-01-01 -p top=2 -p lookback=126 --rebalance monthly --commission 5`
    """
    from marketlake.backtest.portfolio import PortfolioConfig
    from marketlake.backtest.runs import run_portfolio_backtest

    st = state(ctx)
    config = PortfolioConfig(
        cash=cash,
        rebalance=rebalance.value,
        drift_band=drift_band,
        fill=fill.value,
        fractional=fractional,
        allow_short=allow_short,
        max_gross=max_gross,
        commission_bps=commission,
        commission_fixed=commission_fixed,
        slippage_bps=slippage,
    )
    if weights_out is not None and weights_out.suffix not in (".csv", ".parquet"):
        raise InputError("--weights-out must end in .csv or .parquet", param="weights_out")
    begin, stop = _range(start, end, period, synthetic)
    result = run_portfolio_backtest(
        None if synthetic and no_save else st.store,
        strategy,
        parse_params(param),
        symbols=_symbols(symbol),
        timeframe=timeframe,
        start=begin,
        end=stop,
        config=config,
        synthetic=synthetic,
        seed=seed,
        save=not no_save,
        adjusted=adjusted,
    )
    if weights_out is not None:
        _write_table(result.positions_table(), weights_out)
    _print_portfolio(result, as_json=as_json)


def _write_table(table: Any, path: Path) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.parent.is_dir():
        raise InputError(f"folder {path.parent} does not exist; create it first", param="output")
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
    err_console.print(f"wrote {table.num_rows:,} rows to {path}", highlight=False)


def _print_portfolio(result: Any, *, as_json: bool) -> None:
    from marketlake.backtest.portfolio import PORTFOLIO_STAT_LABELS
    from marketlake.backtest.stats import format_stat

    final = dict(zip(result.symbols, result.weights()[-1].tolist(), strict=True))
    if as_json:
        emit_json(
            {
                "id": result.id,
                "strategy": result.strategy.name,
                "symbols": result.symbols,
                "timeframe": result.timeframe,
                "stats": result.stats,
                "final_weights": final,
                "fills": result.fills.num_rows,
            }
        )
        return
    rows = [
        {"statistic": label, "value": format_stat(key, result.stats[key])}
        for key, label in PORTFOLIO_STAT_LABELS.items()
    ]
    title = f"{result.strategy.label()} on {len(result.symbols)} symbols {result.timeframe}"
    show_table(rows, ("statistic", "value"), title=title, numeric=("value",))
    weights = [{"symbol": s, "final weight (%)": f"{w * 100:.2f}"} for s, w in final.items()]
    show_table(weights, ("symbol", "final weight (%)"), numeric=("final weight (%)",))
    if result.id:
        console.print(
            f"stored as backtest {result.id} (`marketlake backtest show {result.id}`)",
            highlight=False,
        )


def _run_nautilus(
    st: State,
    symbol: str,
    timeframe: str,
    start: datetime | None,
    end: datetime | None,
    params: dict[str, str],
    cash: float,
    synthetic: bool,
    seed: int,
    as_json: bool,
) -> None:
    from marketlake.backtest import nautilus
    from marketlake.backtest.runs import trade_records
    from marketlake.backtest.strategies import SmaCross
    from marketlake.schema import default_instrument

    chosen = SmaCross.from_params(params)
    [bars] = _load(st, [symbol], timeframe, start, end, synthetic, seed)
    instrument = None if synthetic else st.store.instrument(symbol, missing_ok=True)
    result = nautilus.run_sma_cross(
        instrument or default_instrument(symbol),
        bars,
        timeframe,
        fast=int(chosen.params()["fast"]),
        slow=int(chosen.params()["slow"]),
        cash=cash,
    )
    summary = {
        "engine": "nautilus",
        "strategy": chosen.label(),
        "symbol": symbol,
        "timeframe": timeframe,
        "initial_cash": cash,
        "final_equity": result.final_equity,
        "total_return_pct": (result.final_equity / cash - 1) * 100,
        "fills": result.fills.num_rows,
        "trades": result.trades.num_rows,
    }
    if as_json:
        emit_json({**summary, "trades": trade_records(result.trades)})
        return
    rows = [{"statistic": k, "value": v} for k, v in summary.items()]
    show_table(rows, ("statistic", "value"), title=f"NautilusTrader: {chosen.label()} on {symbol}")


def print_result(result: BacktestResult, *, as_json: bool) -> None:
    """The statistics table (and the stored id), or JSON with statistics and trades."""
    from marketlake.backtest.runs import trade_records
    from marketlake.backtest.stats import STAT_LABELS, format_stat

    if as_json:
        emit_json(
            {
                "id": result.id,
                "strategy": result.strategy.name,
                "params": result.strategy.params(),
                "symbols": result.symbols,
                "timeframe": result.timeframe,
                "config": result.config.as_dict(),
                "stats": result.stats,
                "trades": trade_records(result.trades),
            }
        )
        return
    rows = [
        {"statistic": label, "value": format_stat(key, result.stats[key])}
        for key, label in STAT_LABELS.items()
    ]
    title = f"{result.strategy.label()} on {', '.join(result.symbols)} {result.timeframe}"
    show_table(rows, ("statistic", "value"), title=title.strip(), numeric=("value",))
    if result.id:
        console.print(
            f"stored as backtest {result.id} (`marketlake backtest show {result.id}`)",
            highlight=False,
        )


@backtest_group.command("sweep")
def sweep(
    ctx: typer.Context,
    strategy: Strategy,
    symbol: Symbols,
    param: Annotated[
        list[str],
        typer.Option("--param", "-p", help="NAME=START:STOP:STEP, NAME=V1,V2,… or NAME=VALUE."),
    ],
    timeframe: TimeframeOpt = "1d",
    start: Start = None,
    end: End = None,
    period: Period = None,
    cash: Cash = 10_000.0,
    commission: Commission = 0.0,
    commission_fixed: CommissionFixed = 0.0,
    slippage: Slippage = 0.0,
    fill: Fill = FillAt.open,
    sizing: Sizing = SizingMode.all_in,
    size: Size = 1.0,
    fractional: Fractional = False,
    allow_short: Short = False,
    stop_loss: StopLoss = None,
    take_profit: TakeProfit = None,
    synthetic: Synthetic = False,
    seed: Seed = 7,
    jobs: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
    sort: Annotated[str, typer.Option(help="Statistic to rank by, best first.")] = "sharpe",
    top: Annotated[int, typer.Option(help="Rows to print.")] = 20,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Also write every row to a .csv, .json or .parquet file. A .csv is written "
            "as rows finish, with memory flat in the grid's size (up to 50M combinations).",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue a stopped sweep from the rows in its --output .csv."
        ),
    ] = False,
    no_save: NoSave = False,
    as_json: AsJson = False,
) -> None:
    """Backtest every combination of a parameter grid, in parallel, and rank the results.

    Example: `marketlake backtest sweep -s sma_cross --symbol AAPL -t 1h --start 2024-01-02
    --param fast=5:50:5 --param slow=20:200:10 --sort sharpe`

    Large grids: `--output sweep.csv` streams rows to the file as they finish and keeps only
    the best 1,000 in memory; after Ctrl-C or a crash, the same command with `--resume`
    runs only the combinations not yet in the file.
    """
    from marketlake.backtest.runs import save_sweep
    from marketlake.backtest.sweep import MAX_STREAMED, parse_grid, run_sweep, sort_rows

    streamed = output is not None and output.suffix.lower() == ".csv"
    if resume and not streamed:
        raise InputError("--resume needs --output FILE.csv (the file of the stopped sweep)")

    st = state(ctx)
    config = _config(
        cash,
        commission,
        commission_fixed,
        slippage,
        fill,
        sizing,
        size,
        fractional,
        allow_short,
        stop_loss,
        take_profit,
    )
    grid = parse_grid(strategy, param, limit=MAX_STREAMED if streamed else None)
    sort_rows([], sort)  # an unknown --sort fails before the work
    names = _symbols(symbol)
    begin, stop = _range(start, end, period, synthetic)
    bars = _load(st, names, timeframe, begin, stop, synthetic, seed)
    if streamed:
        assert output is not None
        _stream_sweep(st, bars, strategy, grid, config, output, resume, jobs, sort, top,
                      no_save=no_save, as_json=as_json,
                      request={"strategy": strategy, "grid": grid, "symbols": names,
                               "timeframe": timeframe, "start": begin, "end": stop,
                               "config": config.as_dict(), "sort": sort,
                               "source": "synthetic" if synthetic else "store"})  # fmt: skip
        return
    result = _with_progress(
        lambda progress: run_sweep(bars, strategy, grid, config, jobs=jobs, progress=progress),
        quiet=as_json,
    )
    rows = sort_rows(result.rows, sort)
    if not no_save:
        request = {
            "strategy": strategy,
            "grid": grid,
            "symbols": names,
            "timeframe": timeframe,
            "start": begin,
            "end": stop,
            "config": config.as_dict(),
            "sort": sort,
            "source": "synthetic" if synthetic else "store",
        }
        result.id = save_sweep(st.store, request, rows)
    if output is not None:
        _write_rows(rows, st.path(output))
    _print_sweep(rows, list(grid), sort, top, result.id, len(result.skipped), as_json=as_json)


class AnchorMode(StrEnum):
    rolling = "rolling"
    anchored = "anchored"


@backtest_group.command("walk-forward")
def walk_forward_cmd(
    ctx: typer.Context,
    strategy: Strategy,
    symbol: Symbols,
    param: Annotated[
        list[str],
        typer.Option("--param", "-p", help="NAME=START:STOP:STEP, NAME=V1,V2,… or NAME=VALUE."),
    ],
    timeframe: TimeframeOpt = "1d",
    start: Start = None,
    end: End = None,
    period: Period = None,
    windows: Annotated[int, typer.Option(help="Out-of-sample windows.")] = 5,
    train_ratio: Annotated[
        float, typer.Option(help="In-sample length as a multiple of the out-of-sample length.")
    ] = 3.0,
    anchor: Annotated[
        AnchorMode, typer.Option(help="rolling: fixed-length in-sample; anchored: from the start.")
    ] = AnchorMode.rolling,
    objective: Annotated[
        str, typer.Option(help="Statistic that picks each window's parameters.")
    ] = "sharpe",
    cash: Cash = 10_000.0,
    commission: Commission = 0.0,
    commission_fixed: CommissionFixed = 0.0,
    slippage: Slippage = 0.0,
    fill: Fill = FillAt.open,
    sizing: Sizing = SizingMode.all_in,
    size: Size = 1.0,
    fractional: Fractional = False,
    allow_short: Short = False,
    stop_loss: StopLoss = None,
    take_profit: TakeProfit = None,
    synthetic: Synthetic = False,
    seed: Seed = 7,
    jobs: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
    report: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report.")] = None,
    no_save: NoSave = False,
    as_json: AsJson = False,
) -> None:
    """Walk-forward optimisation: pick parameters in-sample, trade them out-of-sample.

    Example: `marketlake backtest walk-forward -s sma_cross --symbol AAPL -t 1h
    --start 2022-01-01 -p fast=5:30:5 -p slow=20:100:10 --windows 6 --objective sharpe
    --report wf.html`
    """
    from marketlake.backtest.report import render_walk_forward_html, write_html
    from marketlake.backtest.runs import save_walk_forward
    from marketlake.backtest.sweep import parse_grid
    from marketlake.backtest.walkforward import walk_forward

    st = state(ctx)
    config = _config(
        cash,
        commission,
        commission_fixed,
        slippage,
        fill,
        sizing,
        size,
        fractional,
        allow_short,
        stop_loss,
        take_profit,
    )
    grid = parse_grid(strategy, param)
    if report is not None and not report.parent.is_dir():
        raise InputError(f"folder {report.parent} does not exist; create it first", param="report")
    names = _symbols(symbol)
    begin, stop = _range(start, end, period, synthetic)
    bars = _load(st, names, timeframe, begin, stop, synthetic, seed)
    result = _with_progress(
        lambda progress: walk_forward(
            bars,
            strategy,
            grid,
            config,
            windows=windows,
            train_ratio=train_ratio,
            anchor=anchor.value,
            objective=objective,
            jobs=jobs,
            progress=progress,
            timeframe=timeframe,
        ),
        quiet=as_json,
    )
    if not no_save:
        request = {
            "strategy": strategy,
            "grid": grid,
            "symbols": names,
            "timeframe": timeframe,
            "windows": windows,
            "train_ratio": train_ratio,
            "anchor": anchor.value,
            "objective": objective,
            "config": config.as_dict(),
        }
        result.id = save_walk_forward(st.store, request, result)
    if report is not None:
        write_html(render_walk_forward_html(result), report)
        err_console.print(f"report written to {report}", highlight=False)
    if as_json:
        emit_json(
            {
                "id": result.id,
                "strategy": strategy,
                "objective": objective,
                "stats": result.stats,
                "windows": result.windows_table().to_pylist(),
                "stability": result.stability(),
            }
        )
        return
    rows = result.windows_table().to_pylist()
    show_table(rows, tuple(rows[0]), title=f"walk-forward {strategy}: windows (OOS unless is_)")
    show_table(
        [{k: v for k, v in s.items() if k != "chosen"} for s in result.stability()],
        ("parameter", "distinct", "most_common", "share_pct", "spread"),
        title="parameter stability",
    )
    stats = [{"statistic": k, "value": v} for k, v in result.stats.items()]
    show_table(stats, ("statistic", "value"), title="stitched out-of-sample", numeric=("value",))
    if result.id:
        console.print(
            f"stored as backtest {result.id} (`marketlake backtest show {result.id}`)",
            highlight=False,
        )


def _stream_sweep(
    st: State,
    bars: list[Bars],
    strategy: str,
    grid: dict[str, Any],
    config: BacktestConfig,
    output: Path,
    resume: bool,
    jobs: int | None,
    sort: str,
    top: int,
    *,
    no_save: bool,
    as_json: bool,
    request: dict[str, Any],
) -> None:
    from marketlake.backtest.runs import save_sweep
    from marketlake.backtest.sweep import stream_sweep

    result = _with_progress(
        lambda progress: stream_sweep(
            bars, strategy, grid, config, output=output, sort=sort, resume=resume, jobs=jobs,
            progress=progress,
        ),
        quiet=as_json,
    )  # fmt: skip
    if not result.top:
        raise InputError(f"every combination failed, e.g. {result.first_problem}", param="param")
    if not no_save:
        # the store keeps the best rows; the file has them all
        result.id = save_sweep(st.store, {**request, "output": str(output)}, result.top)
    err_console.print(
        f"{result.done - result.resumed:,} combinations run"
        + (f", {result.resumed:,} already in the file" if result.resumed else "")
        + f"; every row is in {output}",
        highlight=False,
    )
    _print_sweep(result.top, list(grid), sort, top, result.id, result.skipped, as_json=as_json)


def _load(
    st: State,
    symbols: list[str],
    timeframe: str,
    start: datetime | None,
    end: datetime | None,
    synthetic: bool,
    seed: int,
) -> list[Bars]:
    from marketlake.backtest.data import load_bars, split_symbols, synthetic_bars

    if synthetic and start is not None and end is not None:
        return split_symbols(synthetic_bars(symbols, timeframe, start, end, seed))
    return load_bars(st.store, symbols, timeframe, start, end)


def _with_progress(work: Any, *, quiet: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    show = not quiet and stderr_isatty()
    with Progress(
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not show,
    ) as bar:
        task = bar.add_task("sweep", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return work(progress)


def _write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    import polars as pl

    frame = pl.DataFrame(rows, infer_schema_length=None)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame.write_csv(path)
    elif suffix == ".parquet":
        frame.write_parquet(path)
    elif suffix == ".json":
        frame.write_json(path)
    else:
        raise InputError(f"--output {path}: use a .csv, .json or .parquet file", param="output")


def _print_sweep(
    rows: list[dict[str, Any]],
    names: list[str],
    sort: str,
    top: int,
    sweep_id: str | None,
    skipped: int,
    *,
    as_json: bool,
) -> None:
    if as_json:
        emit_json({"id": sweep_id, "sort": sort, "skipped": skipped, "rows": rows})
        return
    columns = [
        *names,
        *dict.fromkeys(
            [sort, "total_return_pct", "sharpe", "max_drawdown_pct", "trades", "win_rate_pct"]
        ),
    ]
    shown = [{k: _round(row.get(k)) for k in columns} for row in rows[:top]]
    show_table(
        shown, columns, title=f"Top {min(top, len(rows))} of {len(rows)} by {sort}", numeric=columns
    )
    notes = [f"{skipped} invalid combinations skipped"] if skipped else []
    if sweep_id:
        notes.append(f"stored as backtest {sweep_id}")
    if notes:
        console.print("; ".join(notes), highlight=False)


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


@backtest_group.command("strategies")
def strategies(as_json: AsJson = False) -> None:
    """List the built-in strategies and their parameters."""
    from marketlake.backtest.strategies import STRATEGIES

    rows: list[dict[str, Any]] = [
        {
            "strategy": name,
            "parameter": p.name,
            "type": p.type.__name__,
            "default": p.default,
            "description": p.help,
        }
        for name, cls in STRATEGIES.items()
        for p in cls.parameters()
    ]
    rows += [
        {
            "strategy": name,
            "parameter": "",
            "type": "",
            "default": None,
            "description": "(no parameters)",
        }
        for name, cls in STRATEGIES.items()
        if not cls.parameters()
    ]
    show_table(
        rows,
        ("strategy", "parameter", "type", "default", "description"),
        title="Strategies",
        as_json=as_json,
    )


@backtest_group.command("show")
def show(ctx: typer.Context, backtest_id: str, as_json: AsJson = False) -> None:
    """Show a stored backtest (statistics; with --json also trades and equity)."""
    from marketlake.backtest.runs import get_backtest
    from marketlake.backtest.stats import STAT_LABELS, format_stat

    record = get_backtest(state(ctx).store, backtest_id)
    if as_json:
        emit_json(record)
        return
    request = record["request"]
    if request.get("kind") == "sweep":
        _print_sweep(
            record["stats"],
            list(request["grid"]),
            request["sort"],
            20,
            record["id"],
            0,
            as_json=False,
        )
        return
    rows = [
        {"statistic": label, "value": format_stat(key, record["stats"].get(key))}
        for key, label in STAT_LABELS.items()
    ]
    params = ", ".join(f"{k}={v}" for k, v in request["params"].items())
    show_table(
        rows,
        ("statistic", "value"),
        numeric=("value",),
        title=f"{request['strategy']}({params}) on {', '.join(request['symbols'])} "
        f"{request['timeframe']} (backtest {record['id']})",
    )


@backtest_group.command("list")
def list_(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="How many of the newest.")] = 20,
    as_json: AsJson = False,
) -> None:
    """List stored backtests and sweeps, newest first."""
    from marketlake.backtest.runs import list_backtests

    rows = []
    for record in list_backtests(state(ctx).store, limit):
        request, stats = record["request"], record["stats"]
        single = request.get("kind") != "sweep"
        rows.append(
            {
                "id": record["id"],
                "kind": request.get("kind"),
                "strategy": request["strategy"],
                "symbols": ",".join(request["symbols"]),
                "timeframe": request["timeframe"],
                "created": record["created_at"],
                "return %": _round(stats.get("total_return_pct")) if single else None,
                "sharpe": _round(stats.get("sharpe")) if single else None,
            }
        )
    show_table(
        rows,
        ("id", "kind", "strategy", "symbols", "timeframe", "created", "return %", "sharpe"),
        title="Backtests",
        as_json=as_json,
        numeric=("return %", "sharpe"),
    )


def register(app: typer.Typer) -> None:
    app.add_typer(backtest_group, name="backtest")
