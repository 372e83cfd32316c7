"""Terminal output: Rich tables for people, JSON for scripts, one-line errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from marketlake.config import redact

console = Console()
err_console = Console(stderr=True)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, float):
        return f"{value:,.6g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def emit_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    sys.stdout.write(json.dumps(data, default=_json_default, indent=2) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def show_table(
    rows: Iterable[dict[str, Any]],
    columns: Sequence[str],
    *,
    title: str | None = None,
    as_json: bool = False,
    numeric: Sequence[str] = (),
) -> None:
    """Print ``rows`` as a Rich table, or as a JSON list with ``as_json``."""
    rows = list(rows)
    if as_json:
        emit_json([{c: r.get(c) for c in columns} for r in rows])
        return
    table = Table(title=title, header_style="bold cyan")
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def error(message: str) -> None:
    """One readable line on stderr, with any credentials in it redacted."""
    err_console.print(f"[bold red]error:[/] {redact(message)}", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {redact(message)}", highlight=False, soft_wrap=True)
