"""``marketlake keys create|list|revoke``: API keys for the REST API."""

from __future__ import annotations

from typing import Annotated

import typer

from marketlake.cli.app import state
from marketlake.cli.output import console, emit_json, show_table

keys_group = typer.Typer(
    help="API keys for the REST API (stored hashed; shown once).", no_args_is_help=True
)


@keys_group.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name for the key, e.g. ci or dashboard.")],
    scope: Annotated[
        str, typer.Option("--scope", "-s", help="Comma-separated scopes: read, write, admin.")
    ] = "read",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a key and print it once; only its hash is stored.

    Example: `marketlake keys create ci --scope read,write`
    """
    from marketlake.api.keys import create_key

    key, plaintext = create_key(state(ctx).store, name, scope)
    if as_json:
        emit_json(key.as_dict() | {"key": plaintext})
        return
    console.print(
        f"created key [bold]{key.name}[/] (id {key.id}) with scopes {', '.join(key.scopes)}",
        highlight=False,
    )
    console.print("store it now, it is not shown again:", style="yellow")
    console.print(plaintext, highlight=False, soft_wrap=True)
    console.print(
        "send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
        style="dim",
        highlight=False,
    )


@keys_group.command("list")
def keys_list(
    ctx: typer.Context,
    active: Annotated[bool, typer.Option("--active", help="Only keys not revoked.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List keys (never their secrets)."""
    from marketlake.api.keys import list_keys

    rows = [
        k.as_dict() | {"scopes": ",".join(k.scopes)}
        for k in list_keys(state(ctx).store, include_revoked=not active)
    ]
    show_table(
        rows,
        ("id", "name", "scopes", "created_at", "revoked_at"),
        title="API keys",
        as_json=as_json,
    )


@keys_group.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key's id or name.")],
) -> None:
    """Revoke a key; requests with it are refused from then on."""
    from marketlake.api.keys import revoke_key

    revoked = revoke_key(state(ctx).store, key)
    console.print(f"revoked key {revoked.name} (id {revoked.id})", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_group, name="keys")
