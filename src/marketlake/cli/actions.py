"""``marketlake actions SYMBOL``: the splits and dividends stored for a symbol."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from marketlake.cli.app import state
from marketlake.cli.output import console, show_table

if TYPE_CHECKING:
    pass


def actions(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="Symbol, e.g. AAPL.")],
    start: Annotated[str | None, typer.Option(help="From ex-date (inclusive), ISO date.")] = None,
    end: Annotated[str | None, typer.Option(help="To ex-date (exclusive), ISO date.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List stored corporate actions: splits (ratio, 4.0 = 4-for-1) and cash dividends.

    They arrive with `marketlake ingest yahoo …` and drive `marketlake bars --adjusted`.
    """
    from marketlake.timeseries.times import resolve_range

    store = state(ctx).store
    store.instrument(symbol)
    begin, stop = resolve_range(start, end, None, required=False)
    rows = store.read_actions(symbol, begin, stop).to_pylist()
    for row in rows:
        row["ex_date"] = row["ts"].date().isoformat()
    if not rows and not as_json:
        console.print(
            f"no corporate actions stored for {symbol.upper()}; they come with "
            "`marketlake ingest yahoo`",
            highlight=False,
        )
        return
    show_table(
        rows,
        ("ex_date", "kind", "value", "source"),
        title=f"{symbol.upper()} corporate actions",
        as_json=as_json,
        numeric=("value",),
    )


def register(app: typer.Typer) -> None:
    app.command("actions")(actions)
