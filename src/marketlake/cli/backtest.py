"""``marketlake backtest run | sweep | strategies | show | list``.

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
from marketlake.timeseries.times import resolve_range

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
    no_save: NoSave = False,
    as_json: AsJson = False,
) -> None:
    """Backtest one strategy and print its statistics (or, with --json, statistics and trades).

    Example: `marketlake backtest run -s sma_cross --symbol AAPL -t 1h --start 2024-01-02
    --param fast=10 --param slow=40 --commission 5 --report aapl.html`
    """
    from marketlake.backtest.runs import run_backtest

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
    )
    print_result(result, as_json=as_json)
    if report is not None:
        from marketlake.backtest.report import write_report

        write_report(result, st.path(report))
        err_console.print(f"report written to {report}", highlight=False)


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
            "--output", "-o", help="Also write every row to a .csv, .json or .parquet file."
        ),
    ] = None,
    no_save: NoSave = False,
    as_json: AsJson = False,
) -> None:
    """Backtest every combination of a parameter grid, in parallel, and rank the results.

    Example: `marketlake backtest sweep -s sma_cross --symbol AAPL -t 1h --start 2024-01-02
    --param fast=5:50:5 --param slow=20:200:10 --sort sharpe`
    """
    from marketlake.backtest.runs import save_sweep
    from marketlake.backtest.sweep import parse_grid, run_sweep, sort_rows

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
    sort_rows([], sort)  # an unknown --sort fails before the work
    names = _symbols(symbol)
    begin, stop = _range(start, end, period, synthetic)
    bars = _load(st, names, timeframe, begin, stop, synthetic, seed)
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
