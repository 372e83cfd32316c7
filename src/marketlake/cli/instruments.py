"""``marketlake instruments add|list|show|rm``: the instrument registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from marketlake.cli.app import state
from marketlake.cli.output import console, emit_json, show_table
from marketlake.errors import InputError

if TYPE_CHECKING:
    pass


group = typer.Typer(help="Register and inspect instruments.", no_args_is_help=True)

COLUMNS = ("symbol", "name", "asset_class", "exchange", "currency", "timezone", "active")


@group.command("add")
def add(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="Unique symbol, e.g. AAPL, BTCUSDT, ^GSPC.")],
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    asset_class: Annotated[
        str, typer.Option(help="stock, index, crypto, fx, etf or future.")
    ] = "stock",
    exchange: Annotated[str, typer.Option(help="Exchange code, e.g. XNAS.")] = "",
    currency: Annotated[str, typer.Option(help="Quote currency.")] = "USD",
    timezone: Annotated[
        str, typer.Option(help="IANA timezone of the trading sessions.")
    ] = "America/New_York",
) -> None:
    """Register an instrument."""
    from pydantic import ValidationError

    from marketlake.schema import Instrument

    try:
        instrument = Instrument(
            symbol=symbol,
            name=name,
            asset_class=asset_class,
            exchange=exchange,
            currency=currency,
            timezone=timezone,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InputError(f"--{str(first['loc'][0]).replace('_', '-')}: {message}") from None
    state(ctx).store.add_instrument(instrument)
    console.print(f"added {instrument.symbol}")


@group.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List registered instruments."""
    rows = [i.model_dump() for i in state(ctx).store.list_instruments()]
    show_table(rows, COLUMNS, title="Instruments", as_json=as_json)


@group.command("show")
def show(
    ctx: typer.Context,
    symbol: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one instrument and what is stored for it."""
    store = state(ctx).store
    instrument = store.instrument(symbol)
    data = instrument.model_dump()
    data["auto_registered"] = bool(store.auto_registered([symbol]))
    coverage = [row for row in store.bar_summary() if row["symbol"] == instrument.symbol]
    from marketlake.quality.policy import latest_scores

    quality = latest_scores(store, instrument.symbol)
    if as_json:
        emit_json({**data, "bars": coverage, "quality": quality})
        return
    for key, value in data.items():
        console.print(f"[bold]{key:>16}[/] {value}")
    if data["auto_registered"]:
        console.print(
            "[yellow]registered automatically with defaults on first ingest; "
            "fix with `marketlake instruments add` after `rm`[/]"
        )
    show_table(
        coverage, ("timeframe", "bars", "first", "last"), title="Stored bars", numeric=("bars",)
    )
    if not quality:
        console.print(f"[dim]no quality report yet: `marketlake validate {instrument.symbol}`[/]")
        return
    rows = [
        {**q, "score": "" if q["score"] is None else f"{100 * q['score']:.2f}%"} for q in quality
    ]
    show_table(
        rows,
        ("timeframe", "score", "expected", "missing", "errors", "warnings", "report_id"),
        title="Quality (latest report per timeframe)",
        numeric=("score", "expected", "missing", "errors", "warnings"),
    )


@group.command("rm")
def rm(
    ctx: typer.Context,
    symbol: str,
    with_data: Annotated[
        bool, typer.Option("--with-data", help="Delete its bars and trades too.")
    ] = False,
) -> None:
    """Remove an instrument (its data stays unless --with-data)."""
    state(ctx).store.delete_instrument(symbol, with_data=with_data)
    console.print(f"removed {symbol.upper()}")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="instruments")
