"""Moving data: ``export``, ``import-lake``, ``lake compact`` and ``copy``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from marketlake.cli.app import state
from marketlake.cli.output import emit_json, show_table
from marketlake.errors import InputError

lake_group = typer.Typer(
    help="Maintain a Parquet lake written by `marketlake export`.", no_args_is_help=True
)

if TYPE_CHECKING:
    pass


Symbols = Annotated[
    str | None, typer.Option("--symbols", "-s", help="Comma-separated symbols (default: all).")
]
TimeframeOpt = Annotated[
    str | None, typer.Option("--timeframe", "-t", help="Only this timeframe (default: all).")
]
Start = Annotated[str | None, typer.Option(help="From (inclusive), ISO date or time, UTC.")]
End = Annotated[str | None, typer.Option(help="To (exclusive).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _symbols(text: str | None) -> list[str] | None:
    if text is None:
        return None
    symbols = [s.strip() for s in text.split(",") if s.strip()]
    if not symbols:
        raise InputError("--symbols is empty; give e.g. --symbols AAPL,MSFT", param="symbols")
    return symbols


def _show(summary: dict[str, Any], title: str, as_json: bool) -> None:
    if as_json:
        emit_json(summary)
        return
    rows = [{"what": k, "count": v} for k, v in summary.items() if not isinstance(v, dict)]
    for kind in ("bars", "trades"):
        if isinstance(summary.get(kind), dict):
            rows += [{"what": f"{kind} {k}", "count": v} for k, v in summary[kind].items()]
    show_table(rows, ("what", "count"), title=title, numeric=("count",))


class ExportFormat(StrEnum):
    lake = "lake"
    nautilus = "nautilus"


def export(
    ctx: typer.Context,
    to: Annotated[Path, typer.Option("--to", help="Lake directory (created if missing).")],
    symbols: Symbols = None,
    timeframe: TimeframeOpt = None,
    start: Start = None,
    end: End = None,
    format_: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="lake: hive-partitioned Parquet; nautilus: a NautilusTrader data catalog "
            "(needs the nautilus extra).",
        ),
    ] = ExportFormat.lake,
    as_json: AsJson = False,
) -> None:
    """Write stored bars, trades and instruments as hive-partitioned Parquet (zstd).

    Layout: DIR/bars/timeframe=…/symbol=…/year=…/part-….parquet, one file per
    partition per export; DuckDB, Polars and Spark read it directly. With
    `--format nautilus`, DIR becomes a NautilusTrader `ParquetDataCatalog` of the
    instruments and their bars (stamped at their close, Nautilus' convention).

    Example: `marketlake export --to lake/ --symbols AAPL,MSFT --timeframe 1m`
    """
    from marketlake.store.lake import export_lake
    from marketlake.timeseries.times import resolve_range

    begin, stop = resolve_range(start, end, None, required=False)
    target = state(ctx).path(to)
    if target.exists() and not target.is_dir():
        raise InputError(
            f"--to {to} is an existing file; export writes a directory (a lake): name a "
            "new or existing directory, e.g. --to lake/",
            param="to",
        )
    for symbol in _symbols(symbols) or []:
        state(ctx).store.instrument(symbol)  # unknown: NotFoundError (exit 2), like bars
    if format_ is ExportFormat.nautilus:
        _export_nautilus(ctx, to, _symbols(symbols), timeframe, begin, stop, as_json)
        return
    summary = export_lake(
        state(ctx).store,
        state(ctx).path(to),
        symbols=_symbols(symbols),
        timeframe=timeframe,
        start=begin,
        end=stop,
    )
    result = summary.as_dict()
    _show(
        {k: result[k] for k in ("files", "bars", "trades", "instruments")},
        f"exported to {to}",
        as_json,
    )


def _export_nautilus(
    ctx: typer.Context,
    to: Path,
    symbols: list[str] | None,
    timeframe: str | None,
    start: Any,
    end: Any,
    as_json: bool,
) -> None:
    from marketlake.backtest.data import load_bars
    from marketlake.backtest.nautilus import write_catalog
    from marketlake.schema import default_instrument

    store = state(ctx).store
    if not timeframe:
        raise InputError("--format nautilus needs --timeframe (one bar type per export)")
    names = symbols or sorted({row["symbol"] for row in store.bar_summary()})
    if not names:
        raise InputError("the store holds no bars to export; ingest some first")
    bars = load_bars(store, names, timeframe, start, end)
    items = [
        (store.instrument(b.symbol, missing_ok=True) or default_instrument(b.symbol), b,
         timeframe)
        for b in bars
    ]  # fmt: skip
    summary = write_catalog(to, items)
    _show(
        {"instruments": summary.instruments, "bars": summary.bars},
        f"NautilusTrader catalog written to {to}",
        as_json,
    )


def import_lake(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="Lake directory written by `export`.")],
    symbols: Symbols = None,
    timeframe: TimeframeOpt = None,
    start: Start = None,
    end: End = None,
    as_json: AsJson = False,
) -> None:
    """Read a Parquet lake into the store; re-importing adds nothing (idempotent writes).

    Example: `marketlake --store postgresql://localhost/marketlake import-lake lake/`
    """
    from marketlake.store.lake import import_lake as run
    from marketlake.timeseries.times import resolve_range

    if not state(ctx).path(directory).is_dir():
        raise InputError(
            f"{directory} is not a directory; give the --to folder of an export", param="dir"
        )
    begin, stop = resolve_range(start, end, None, required=False)
    summary = run(
        state(ctx).store,
        state(ctx).path(directory),
        symbols=_symbols(symbols),
        timeframe=timeframe,
        start=begin,
        end=stop,
    )
    result = summary.as_dict()
    keys = ("files", "bars", "trades", "instruments", "inserted", "duplicates", "conflicts")
    _show({k: result[k] for k in keys}, f"imported {directory}", as_json)


@lake_group.command("compact")
def compact(
    directory: Annotated[Path, typer.Argument(help="Lake directory.")],
    as_json: AsJson = False,
) -> None:
    """Merge each partition's files into one (sorted, newest export wins on repeats)."""
    from marketlake.store.lake import compact_lake

    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory", param="dir")
    result = compact_lake(directory).as_dict()
    keys = ("partitions", "files", "removed_files", "duplicates_dropped")
    _show({k: result[k] for k in keys}, f"compacted {directory}", as_json)


def copy(
    source: Annotated[str, typer.Option("--from", help="Store URI to read.")],
    target: Annotated[str, typer.Option("--to", help="Store URI to write (migrated).")],
    symbols: Symbols = None,
    timeframe: TimeframeOpt = None,
    start: Start = None,
    end: End = None,
    as_json: AsJson = False,
) -> None:
    """Copy instruments, bars and trades from one store to another, idempotently.

    Example: `marketlake copy --from duckdb:///./data/marketlake.duckdb
    --to postgresql://postgres@localhost/marketlake`
    """
    from marketlake.store import open_store
    from marketlake.store.transfer import copy_store
    from marketlake.timeseries.times import resolve_range

    if source == target:
        raise InputError("--from and --to name the same store", param="to")
    from marketlake.cli.app import _require_existing

    _require_existing(source, "--from")
    begin, stop = resolve_range(start, end, None, required=False)
    with open_store(source) as src, open_store(target) as dst:
        result = copy_store(
            src, dst, symbols=_symbols(symbols), timeframe=timeframe, start=begin, end=stop
        )
    _show(result, "copied", as_json)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("import-lake")(import_lake)
    app.command("copy")(copy)
    app.add_typer(lake_group, name="lake")
