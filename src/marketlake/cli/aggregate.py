"""``marketlake aggregate``: roll stored bars up to coarser timeframes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from marketlake.cli.app import state
from marketlake.cli.output import console, show_table

COLUMNS = (
    "symbol",
    "timeframe",
    "source",
    "source_bars",
    "bars",
    "inserted",
    "replaced",
    "duplicates",
    "first",
    "last",
    "partial",
)

if TYPE_CHECKING:
    pass


def aggregate(
    ctx: typer.Context,
    symbols: Annotated[
        list[str] | None,
        typer.Argument(help="Symbols (default: every symbol with bars at --from)."),
    ] = None,
    source: Annotated[str, typer.Option("--from", help="Timeframe to roll up.")] = "1m",
    to: Annotated[
        str, typer.Option("--to", help="Comma-separated coarser timeframes, e.g. 5m,1h,1d,1w,1mo.")
    ] = "5m,1h,1d",
    start: Annotated[
        str | None, typer.Option(help="Only buckets with source bars from this ISO date/time.")
    ] = None,
    end: Annotated[str | None, typer.Option(help="... and before this one.")] = None,
    replace_sources: Annotated[
        bool | None,
        typer.Option(
            "--replace-sources/--keep-sources",
            help="Overwrite stored bars of another source (a provider's own bars at the "
            "target timeframe); default: MARKETLAKE_ROLLUP_REPLACE_SOURCES (false).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Build (or rebuild) roll-ups from stored bars; only buckets with source bars in the
    range are recomputed. Daily and coarser bars follow each instrument's sessions.

    Example: `marketlake aggregate AAPL BTCUSDT --from 1m --to 5m,1h,1d`
    """
    from marketlake.timeseries.times import resolve_range

    st = state(ctx)
    begin, stop = resolve_range(start, end, None, required=False)
    targets = [t.strip() for t in to.split(",") if t.strip()]
    from marketlake.ingest.rollups import aggregate_store

    replace = st.settings.rollup_replace_sources if replace_sources is None else replace_sources
    for symbol in symbols or []:
        st.store.instrument(symbol)  # an unknown symbol is a NotFoundError (exit 2), like bars
    results = aggregate_store(
        st.store, symbols or None, source, targets, begin, stop, replace_sources=replace
    )
    rows = [r.as_dict() for r in results]
    show_table(
        rows,
        COLUMNS,
        title=f"Roll-ups from {source}",
        as_json=as_json,
        numeric=("source_bars", "bars", "inserted", "replaced", "duplicates"),
    )
    if not as_json:
        for result in results:
            for clash in result.clashes:
                console.print(f"{clash.symbol}: {clash}", highlight=False, soft_wrap=True)
    if not as_json and any(r.partial for r in results):
        console.print(
            "[dim]partial: the last bar's bucket (or session) has not ended yet; it "
            "is recomputed when new bars arrive[/]",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    app.command("aggregate")(aggregate)
