"""``marketlake import-csv``: load a CSV file of bars for one symbol."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from marketlake.cli.app import state
from marketlake.cli.output import console, emit_json, show_table, stderr_isatty

if TYPE_CHECKING:
    from marketlake.ingest.csv_import import ImportResult


class OnErrorChoice(StrEnum):
    fail = "fail"
    skip = "skip"


def import_csv_command(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="CSV file with a header such as Date,Open,High,Low,Close,Volume.")
    ],
    symbol: Annotated[str, typer.Option("--symbol", "-s", help="Symbol the bars belong to.")],
    timeframe: Annotated[
        str | None,
        typer.Option(
            "--timeframe",
            "-t",
            help="Bar size (1m, 1h, 1d …); inferred from the rows if left out.",
        ),
    ] = None,
    tz: Annotated[
        str | None,
        typer.Option(help="IANA timezone of times written without one, e.g. America/New_York."),
    ] = None,
    on_error: Annotated[
        OnErrorChoice,
        typer.Option(
            "--on-error",
            help="fail: any bad line aborts and nothing is written; skip: write the "
            "good lines and list the bad ones.",
        ),
    ] = OnErrorChoice.fail,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Overwrite stored bars whose values differ (default: keep them).",
        ),
    ] = False,
    delimiter: Annotated[str, typer.Option(help="Column separator.")] = ",",
    date_format: Annotated[
        str | None,
        typer.Option(
            "--date-format",
            help="strptime format of the time column, e.g. %m/%d/%Y for 03/04/2024 "
            "(date and time columns are joined with a space: %d.%m.%Y %H:%M).",
        ),
    ] = None,
    decimal: Annotated[
        str,
        typer.Option(
            "--decimal", help="Decimal mark of the numbers: . or , (with ',' pass --delimiter ';')."
        ),
    ] = ".",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Import bars from a CSV file (idempotent: importing it again adds nothing).

    The bars then pass the quality policy (MARKETLAKE_QUALITY_RULES, config/quality.yml):
    bars a reject rule catches are not stored, flagged ones are stored and reported
    (`marketlake validate --show ID`).

    Example: `marketlake import-csv aapl.csv --symbol AAPL --timeframe 1d`
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from marketlake.ingest.csv_import import import_csv
    from marketlake.quality.policy import QualityPolicy

    st = state(ctx)
    show_progress = not (quiet or as_json) and stderr_isatty()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rows]:>12,} rows"),
        TimeElapsedColumn(),
        disable=not show_progress,
        console=console,
    ) as bar:
        task = bar.add_task(file.name, total=None, rows=0)

        def progress(done: int, total: int, rows: int) -> None:
            bar.update(task, completed=done, total=total, rows=rows)

        result = import_csv(
            st.store,
            st.path(file),
            symbol,
            timeframe=timeframe,
            tz=tz,
            on_error=on_error.value,
            delimiter=delimiter,
            date_format=date_format,
            decimal=decimal,
            on_conflict="replace" if replace else "ignore",
            progress=progress,
            policy=QualityPolicy.from_settings(st.settings),
            one_transaction_bytes=st.settings.import_one_transaction_mib << 20,
        )
    print_import(result, as_json=as_json)


def print_import(result: ImportResult, *, as_json: bool) -> None:
    """The summary of an import: counts, notes and every skipped line."""
    if as_json:
        emit_json({"job_id": result.job_id, **result.summary()})
        return
    rate = result.rows / result.seconds if result.seconds else 0.0
    counts = {
        "symbol": result.symbol,
        "timeframe": result.timeframe,
        "rows read": result.rows,
        "inserted": result.inserted,
        "duplicates": result.duplicates,
        "conflicts": result.conflicts,
        "replaced": result.replaced,
        "skipped": len(result.skipped),
        "rejected (quality)": result.rejected,
        "flagged (quality)": result.flagged,
        "quality score": "" if result.score is None else f"{result.score:.2%}",
        "quality report": result.quality_report or "",
        "seconds": round(result.seconds, 2),
        "rows per second": round(rate),
    }
    show_table(
        [{"": key, "value": value} for key, value in counts.items()],
        ("", "value"),
        numeric=("value",),
        title=f"Import job {result.job_id}: {result.status}",
    )
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    if result.conflicts:
        console.print(
            f"{result.conflicts:,} rows differ from stored bars and were left as "
            "stored; pass --replace to overwrite them",
            highlight=False,
        )
    if result.rejected or result.flagged:
        console.print(
            f"quality: {result.rejected:,} bars rejected (not stored), "
            f"{result.flagged:,} flagged; see `marketlake validate --show "
            f"{result.quality_report}`",
            highlight=False,
            soft_wrap=True,
        )
    if result.skipped:
        console.print(f"skipped {len(result.skipped):,} lines:", highlight=False)
        for bad in result.skipped:
            console.print(f"  {bad}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("import-csv")(import_csv_command)
