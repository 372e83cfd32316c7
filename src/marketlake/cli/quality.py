"""``marketlake validate`` (quality reports) and ``marketlake repair`` (gap filling)."""

from __future__ import annotations

import csv
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from marketlake.cli.app import state
from marketlake.cli.output import console, emit_json, show_table, stdout
from marketlake.errors import InputError

SERIES_COLUMNS = (
    "symbol",
    "timeframe",
    "bars",
    "expected",
    "missing",
    "errors",
    "warnings",
    "score",
)

if TYPE_CHECKING:
    pass

FINDING_COLUMNS = ("rule", "severity", "symbol", "timeframe", "ts", "end_ts", "message")


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class FailOn(StrEnum):
    never = "never"
    error = "error"
    warning = "warning"


def _since(text: str | None) -> datetime | None:
    """An ISO date/time, or a period back from now (``30d``, ``6mo``)."""
    from marketlake.schema import parse_time, utcnow
    from marketlake.timeseries.times import parse_period

    if text is None:
        return None
    if text.strip()[-1:].isalpha() and not text.strip().endswith("Z"):
        return utcnow() - parse_period(text)
    return parse_time(text, param="since")


def validate(
    ctx: typer.Context,
    symbols: Annotated[
        list[str] | None, typer.Argument(help="Symbols (default: all stored).")
    ] = None,
    timeframe: Annotated[
        list[str] | None,
        typer.Option(
            "--timeframe", "-t", help="Timeframe(s) to check (default: every stored one)."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only bars from this ISO date/time, or a period back from now (30d, 6mo)."
        ),
    ] = None,
    until: Annotated[str | None, typer.Option(help="Only bars before this ISO date/time.")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List stored reports instead.")] = False,
    show: Annotated[str | None, typer.Option("--show", help="Show a stored report.")] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    limit: Annotated[int, typer.Option(help="Findings shown in the table format.")] = 20,
    fail_on: Annotated[
        FailOn,
        typer.Option(help="Exit 1 when the report has findings of this severity (or worse)."),
    ] = FailOn.never,
) -> None:
    """Check stored bars against the quality rules, store the report and show it.

    Examples: `marketlake validate AAPL -t 1m --since 30d`, `marketlake validate --list`,
    `marketlake validate --show 3f2a9c01b7de --format csv > findings.csv`
    """
    from marketlake.quality.checks import validate_store
    from marketlake.quality.policy import QualityPolicy, load_report
    from marketlake.schema import parse_time

    st = state(ctx)
    fmt = Format.json if as_json else fmt
    if list_:
        _print_list(st.store, fmt)
        return
    if show is not None:
        report, findings = load_report(st.store, show)
        _print_report(report["id"], report["summary"], findings, fmt, limit)
        return
    start, end = _since(since), parse_time(until, param="until") if until else None
    if start is not None and end is not None and start >= end:
        raise InputError(
            f"--since {start.isoformat()} must be before --until {end.isoformat()}", param="since"
        )
    found = validate_store(
        st.store, symbols, timeframe, start, end, policy=QualityPolicy.from_settings(st.settings)
    )
    findings = [{**f.record(found.id or ""), "values": f.values} for f in found.findings]
    if not found.series and fmt is Format.table:
        console.print("[yellow]no stored bars in that range[/]")
    _print_report(found.id or "", found.summary(), findings, fmt, limit)
    worst = found.errors if fail_on is FailOn.error else found.errors + found.warnings
    if fail_on is not FailOn.never and worst:
        raise typer.Exit(1)


def _series_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for series in summary.get("series", []):
        score = series.get("score")
        rows.append({**series, "score": "" if score is None else f"{100 * score:.2f}%"})
    return rows


def _print_report(
    report_id: str, summary: dict[str, Any], findings: list[dict[str, Any]], fmt: Format, limit: int
) -> None:
    if fmt is Format.json:
        emit_json(
            {
                "report_id": report_id,
                "summary": summary,
                "findings": [{c: f.get(c) for c in (*FINDING_COLUMNS, "values")} for f in findings],
            }
        )
        return
    if fmt is Format.csv:
        writer = csv.writer(stdout())
        writer.writerow(FINDING_COLUMNS)
        for f in findings:
            writer.writerow([_csv_cell(f.get(c)) for c in FINDING_COLUMNS])
        return
    show_table(
        _series_rows(summary),
        SERIES_COLUMNS,
        title=f"Quality report {report_id}",
        numeric=("bars", "expected", "missing", "errors", "warnings", "score"),
    )
    if findings:
        rows = [
            {
                "rule": f"{f['rule']} ({f['severity']})",
                "series": f"{f['symbol']} {f['timeframe']}",
                "when": _when(f),
                "message": f["message"],
            }
            for f in findings[:limit]
        ]
        show_table(
            rows,
            ("rule", "series", "when", "message"),
            title=f"Findings ({summary.get('findings', len(findings))})",
        )
    shown = min(limit, len(findings))
    rest = int(summary.get("findings", len(findings))) - shown
    if rest > 0:
        console.print(
            f"[dim]{rest} more findings: `marketlake validate --show {report_id} --format csv`[/]",
            highlight=False,
        )
    if summary.get("truncated"):
        console.print(
            "[dim]findings beyond MARKETLAKE_QUALITY_MAX_FINDINGS per rule and series "
            "were counted, not stored[/]",
            highlight=False,
        )


def _when(finding: dict[str, Any]) -> str:
    """``2024-03-04 15:00`` or a range ``2024-03-04 15:00 → 15:30``."""
    start, end = finding.get("ts"), finding.get("end_ts")
    if not isinstance(start, datetime):
        return ""
    text = start.strftime("%Y-%m-%d %H:%M")
    if isinstance(end, datetime):
        text += " → " + end.strftime("%H:%M" if end.date() == start.date() else "%Y-%m-%d %H:%M")
    return text


def _csv_cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return "" if value is None else value


def _print_list(store: Any, fmt: Format) -> None:
    from marketlake.quality.policy import list_reports

    rows = []
    for report in list_reports(store, limit=100):
        summary, scope = report["summary"], report["scope"]
        rows.append(
            {
                "id": report["id"],
                "created": report["created_at"],
                "kind": summary.get("kind", ""),
                "job": report["job_id"] or "",
                "symbols": ",".join(scope.get("symbols", []))[:40],
                "findings": summary.get("findings", 0),
                "errors": summary.get("errors", 0),
                "warnings": summary.get("warnings", 0),
                "rejected": summary.get("rejected", 0),
            }
        )
    columns = (
        "id",
        "created",
        "kind",
        "job",
        "symbols",
        "findings",
        "errors",
        "warnings",
        "rejected",
    )
    if fmt is Format.csv:
        writer = csv.writer(stdout())
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_cell(row[c]) for c in columns])
        return
    show_table(
        rows,
        columns,
        title="Quality reports",
        as_json=fmt is Format.json,
        numeric=("findings", "errors", "warnings", "rejected"),
    )


def repair(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="The symbol whose gaps to fill.")],
    timeframe: Annotated[str, typer.Option("--timeframe", "-t", help="Bar size.")] = "1m",
    provider: Annotated[
        str | None,
        typer.Option(help="Provider to fetch from (default: where the stored bars came from)."),
    ] = None,
    start: Annotated[str | None, typer.Option(help="Only gaps from this ISO date/time.")] = None,
    end: Annotated[str | None, typer.Option(help="Only gaps before this ISO date/time.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Re-fetch only the missing ranges of a stored series and record what was filled.

    Example: `marketlake repair AAPL -t 1m --provider synthetic`
    """
    import asyncio

    from marketlake.ingest.repair import RepairResult, repair_gaps, source_provider
    from marketlake.providers import get_provider
    from marketlake.quality.policy import QualityPolicy
    from marketlake.schema import parse_time

    st = state(ctx)
    symbol = symbol.upper()
    name = provider or source_provider(st.store, symbol, timeframe)
    source = get_provider(name, st.settings)
    begin = parse_time(start, param="start") if start else None
    stop = parse_time(end, param="end") if end else None

    async def run() -> RepairResult:
        try:
            return await repair_gaps(
                st.store,
                source,
                symbol,
                timeframe,
                begin,
                stop,
                policy=QualityPolicy.from_settings(st.settings),
            )
        finally:  # else aiohttp warns "Unclosed client session" at exit
            await source.aclose()

    result = asyncio.run(run())
    if as_json:
        emit_json({"job_id": result.job_id, **result.summary()})
        return
    show_table(
        [
            {
                "start": r.start,
                "end": r.end,
                "missing": r.missing,
                "fetched": r.fetched,
                "inserted": r.inserted,
                "error": r.error or "",
            }
            for r in result.ranges
        ],
        ("start", "end", "missing", "fetched", "inserted", "error"),
        title=f"Repair job {result.job_id}: {symbol} {result.timeframe} from {name}",
        numeric=("missing", "fetched", "inserted"),
    )
    console.print(
        f"filled {result.filled:,} of {result.missing_before:,} missing bars; "
        f"{result.missing_after:,} still missing",
        highlight=False,
    )
    if any(r.error for r in result.ranges):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("repair")(repair)
