"""``marketlake ingest`` and ``marketlake bars``: filling the store and reading it back."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from marketlake.cli.app import State, state
from marketlake.cli.output import (
    console,
    emit_json,
    err_console,
    error,
    show_table,
    stderr_isatty,
    stdout_bytes,
)
from marketlake.errors import InputError

# The names of marketlake.providers.PROVIDERS, spelled out so that the help needs no
# provider module (tests/cli/test_bad_input.py checks they agree).
PROVIDER_NAMES = ("alpaca", "binance", "csv", "synthetic", "yahoo")

if TYPE_CHECKING:
    from marketlake.ingest.jobs import IngestResult, ProgressCallback
    from marketlake.providers import Provider


class BarFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def ingest(
    ctx: typer.Context,
    provider: Annotated[str, typer.Argument(help=f"One of: {', '.join(PROVIDER_NAMES)}.")],
    symbols: Annotated[list[str], typer.Argument(help="Symbols to fetch, e.g. AAPL MSFT.")],
    timeframe: Annotated[
        str, typer.Option("--timeframe", "-t", help="Bar size: 1m, 5m, 1h, 1d …")
    ] = "1d",
    start: Annotated[
        str | None, typer.Option(help="First bar (inclusive), ISO date or time, UTC.")
    ] = None,
    end: Annotated[str | None, typer.Option(help="End (exclusive); default now.")] = None,
    period: Annotated[
        str | None, typer.Option(help="Instead of --start: 7d, 1mo, 1y … back from --end.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue each symbol after its last checkpoint.")
    ] = False,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Replace stored bars whose values differ.")
    ] = False,
    concurrency: Annotated[
        int | None, typer.Option(help="Symbols fetched at once (default 4).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Fetch historical bars from a provider into the store (idempotent: re-running adds nothing).

    Symbols are fetched concurrently; one failing symbol does not stop the others
    (the summary says which failed and why, and the exit code is 1). A job that was
    interrupted continues where it stopped with `--resume`.

    Example: `marketlake ingest yahoo AAPL MSFT -t 1d --start 2024-01-01 --end 2024-07-01`
    """
    import asyncio

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from marketlake.providers import get_provider
    from marketlake.timeseries.times import resolve_range

    st = state(ctx)
    begin, stop = resolve_range(start, end, period)
    assert begin is not None
    assert stop is not None
    source = get_provider(provider, st.settings)
    show_progress = not (quiet or as_json) and stderr_isatty()
    with Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        TextColumn("{task.fields[rows]:>10,} bars"),
        TimeElapsedColumn(),
        disable=not show_progress,
        transient=False,
        console=err_console,
    ) as bars:
        tasks = {s.upper(): bars.add_task(s.upper(), total=1.0, rows=0) for s in symbols}

        def progress(symbol: str, rows: int, done: float) -> None:
            task = tasks[symbol]
            bars.update(task, completed=done, rows=bars.tasks[task].fields["rows"] + rows)

        result = asyncio.run(
            _ingest(
                st, source, symbols, timeframe, begin, stop, resume, refresh, concurrency, progress
            )
        )
    if not quiet or as_json:
        print_ingest(result, as_json=as_json)
    if result.status != "succeeded":
        failed = [s.symbol for s in result.symbols if not s.ok]
        error(f"{len(failed)} of {len(result.symbols)} symbols failed: {', '.join(failed)}")
        raise typer.Exit(1)


async def _ingest(
    st: State,
    source: Provider,
    symbols: list[str],
    timeframe: str,
    begin: datetime,
    stop: datetime,
    resume: bool,
    refresh: bool,
    concurrency: int | None,
    progress: ProgressCallback,
) -> IngestResult:
    from marketlake.ingest.jobs import run_ingest

    try:
        return await run_ingest(
            st.store,
            source,
            symbols,
            timeframe,
            begin,
            stop,
            resume=resume,
            refresh=refresh,
            concurrency=st.settings.ingest_concurrency if concurrency is None else concurrency,
            batch_rows=st.settings.ingest_batch_rows,
            progress=progress,
        )
    finally:
        await source.aclose()


def print_ingest(result: IngestResult, *, as_json: bool) -> None:
    """The job summary: one row per symbol, then one line per failed symbol saying why."""
    if as_json:
        emit_json(
            {
                "job_id": result.job_id,
                "status": result.status,
                "seconds": round(result.seconds, 3),
                "symbols": [asdict(s) for s in result.symbols],
            }
        )
        return
    rows = [
        {**asdict(s), "seconds": round(s.seconds, 2), "ok": "yes" if s.ok else "FAILED"}
        for s in result.symbols
    ]
    optional = [c for c in ("replaced", "dropped") if any(r[c] for r in rows)]  # rarely set
    columns = (
        "symbol",
        "fetched",
        "inserted",
        "duplicates",
        "conflicts",
        *optional,
        "seconds",
        "ok",
    )
    show_table(
        rows,
        columns,
        title=f"Ingest job {result.job_id}: {result.status} "
        f"({result.rows:,} bars in {result.seconds:.1f} s)",
        numeric=columns[1:-1],
    )
    for symbol in result.symbols:
        if symbol.error:
            console.print(
                f"[red]{symbol.symbol}[/]: {symbol.error}", highlight=False, soft_wrap=True
            )
        for note in symbol.notes:
            console.print(f"{symbol.symbol}: {note}", highlight=False, soft_wrap=True)
    conflicts = sum(s.conflicts for s in result.symbols)
    if conflicts:
        console.print(
            f"{conflicts:,} fetched bars differ from stored ones and were left as stored "
            "(stored by another provider or by a roll-up with "
            "MARKETLAKE_ROLLUP_REPLACE_SOURCES=true?); pass --refresh to overwrite them",
            highlight=False,
            soft_wrap=True,
        )


def bars(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="Symbol to read.")],
    timeframe: Annotated[
        str, typer.Option("--timeframe", "-t", help="Bar size (the API's default too).")
    ] = "1m",
    start: Annotated[
        str | None, typer.Option(help="From (inclusive), ISO date or time, UTC.")
    ] = None,
    end: Annotated[str | None, typer.Option(help="To (exclusive).")] = None,
    limit: Annotated[
        int | None, typer.Option(help="At most this many bars (the first ones).")
    ] = None,
    tail: Annotated[int | None, typer.Option(help="Only the last N bars.")] = None,
    fmt: Annotated[
        BarFormat, typer.Option("--format", "-f", help="Output format.")
    ] = BarFormat.table,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    adjusted: Annotated[
        bool, typer.Option("--adjusted", help="Split- and dividend-adjusted prices.")
    ] = False,
) -> None:
    """Print or export stored bars (as traded, or `--adjusted` for splits and dividends).

    Example: `marketlake bars AAPL -t 1h --start 2024-03-01 --format csv -o aapl.csv`
    """
    import pyarrow.parquet as pq

    from marketlake.timeseries.times import resolve_range

    st = state(ctx)
    begin, stop = resolve_range(start, end, None, required=False)
    st.store.instrument(symbol)
    if adjusted:
        from marketlake.timeseries.adjust import read_adjusted

        table = read_adjusted(st.store, symbol, timeframe, begin, stop, limit=limit)
    else:
        table = st.store.read_bars(symbol, timeframe, begin, stop, limit=limit).table
    if tail is not None:
        table = table.slice(max(0, table.num_rows - tail))
    fmt = BarFormat.json if as_json else fmt
    if fmt is BarFormat.parquet:
        if output is None:
            raise InputError("--format parquet needs --output FILE", param="output")
        pq.write_table(table, st.path(output), compression="zstd")
    elif fmt is BarFormat.csv:
        from marketlake.api.formats import bars_csv

        data = bars_csv(table)
        if output:
            st.path(output).write_bytes(data)
        else:
            sink = stdout_bytes()
            sink.write(data)
            sink.flush()
    elif fmt is BarFormat.json:
        rows = table.to_pylist()
        if output:
            import json

            st.path(output).write_text(json.dumps(rows, default=str))
        else:
            emit_json(rows)
    else:
        if table.num_rows > 200 and tail is None and limit is None:
            console.print(
                f"[dim]{table.num_rows:,} bars; showing the last 50 (use --tail, "
                "--limit or --format csv)[/]"
            )
            table = table.slice(table.num_rows - 50)
        show_table(
            table.to_pylist(),
            ("ts", "open", "high", "low", "close", "volume", "trades", "vwap", "source"),
            title=f"{symbol.upper()} {timeframe}",
            numeric=("open", "high", "low", "close", "volume", "trades", "vwap"),
            key=("ts", "open", "high", "low", "close"),
            optional=("source", "vwap", "trades", "volume"),
        )
    if output is not None:
        console.print(f"wrote {table.num_rows:,} bars to {output}", highlight=False)
    if table.num_rows == 0 and begin is None and stop is None:
        stored = [r["timeframe"] for r in st.store.bar_summary() if r["symbol"] == symbol.upper()]
        if stored:
            err_console.print(
                f"no {timeframe} bars of {symbol.upper()}; stored timeframes: "
                f"{', '.join(stored)} (pass -t)",
                highlight=False,
            )


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.command("bars")(bars)
