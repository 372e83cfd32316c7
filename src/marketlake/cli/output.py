"""Terminal output: Rich tables for people, JSON for scripts, one-line errors on stderr.

Commands write through ``console``, ``err_console``, :func:`stdout` and
:func:`stdout_bytes`. Normally these are the process's own streams; while a
server runs a command for a CLI elsewhere (:mod:`marketlake.cli.remote`) they
are that caller's streams, rendered for its terminal (width, colours), so the
caller sees exactly what the command prints when run directly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, cast

from rich.console import Console
from rich.table import Table


@dataclass(slots=True)
class Streams:
    """Where one command's output goes: text and bytes on stdout, the two consoles."""

    out: IO[str]
    out_bytes: IO[bytes]
    console: Console
    err_console: Console
    err_tty: bool


_streams: ContextVar[Streams | None] = ContextVar("marketlake_cli_streams", default=None)


class _Console:
    """A stand-in for a Rich console that writes to the running command's streams."""

    def __init__(self, default: Console, *, err: bool) -> None:
        self._default = default
        self._err = err

    def _target(self) -> Console:
        streams = _streams.get()
        if streams is None:
            return self._default
        return streams.err_console if self._err else streams.console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)

    # special methods skip __getattr__: Rich's Live/Progress use the console as a
    # context manager (`with console:`), so these must be forwarded by hand
    def __enter__(self) -> Console:
        return self._target().__enter__()

    def __exit__(self, *exc: object) -> None:
        self._target().__exit__(*exc)


console = cast(Console, _Console(Console(), err=False))
err_console = cast(Console, _Console(Console(stderr=True), err=True))


def redirect(streams: Streams | None) -> Any:
    """Send this context's output to ``streams`` (None: the process's own); returns a token."""
    return _streams.set(streams)


def reset(token: Any) -> None:
    _streams.reset(token)


def redirected() -> bool:
    """Whether this command runs for a caller elsewhere (its output goes there)."""
    return _streams.get() is not None


def stdout() -> IO[str]:
    """The command's standard output (text)."""
    streams = _streams.get()
    return sys.stdout if streams is None else streams.out


def stdout_bytes() -> IO[bytes]:
    """The command's standard output (bytes)."""
    streams = _streams.get()
    return sys.stdout.buffer if streams is None else streams.out_bytes


def stderr_isatty() -> bool:
    """Whether the command's standard error is a terminal (progress bars show then)."""
    streams = _streams.get()
    return sys.stderr.isatty() if streams is None else streams.err_tty


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, float):  # every digit of the stored value, grouped
        return f"{value:,}" if value != value or abs(value) < 1e16 else f"{value:,.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def emit_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    stdout().write(json.dumps(data, default=_json_default, indent=2) + "\n")


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
    key: Sequence[str] = (),
    optional: Sequence[str] = (),
) -> None:
    """Print ``rows`` as a Rich table, or as a JSON list with ``as_json``.

    ``key`` columns never shrink or wrap. When the table is wider than the terminal, the
    ``optional`` columns are left out, the first named first, and a note says which. In a
    pipe or a file nothing is cut: the table is as wide as its cells.
    """
    rows = list(rows)
    if as_json:
        emit_json([{c: r.get(c) for c in columns} for r in rows])
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = {c: max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)}

    def needed(shown: Sequence[str]) -> int:
        return sum(widths[c] + 3 for c in shown) + 1  # "│ cell " per column, closing "│"

    shown = list(columns)
    dropped: list[str] = []
    if console.is_terminal:
        for column in optional:
            if needed(shown) <= console.width:
                break
            if column in shown:
                shown.remove(column)
                dropped.append(column)
    table = Table(title=title, header_style="bold cyan")
    for column in shown:
        fixed = column in key
        table.add_column(
            column,
            justify="right" if column in numeric else "left",
            no_wrap=fixed,
            min_width=widths[column] if fixed else None,
        )
    index = [columns.index(c) for c in shown]
    for row in cells:
        table.add_row(*(row[i] for i in index))
    if console.is_terminal:
        console.print(table)
    else:  # a pipe or a file: as wide as the cells, never cut at 80 columns
        wide = Console(file=console.file, width=max(console.width, needed(shown)))
        wide.print(table)
    if dropped:
        console.print(
            f"[dim]left out to fit {console.width} columns: {', '.join(dropped)} "
            "(widen the terminal, or use --format csv or --json)[/]",
            highlight=False,
        )


def redact(text: str) -> str:
    """:func:`marketlake.config.redact`, imported when first used: the CLI's modules load
    for `--help`, which needs no pydantic."""
    from marketlake.config import redact as redact_uris

    return redact_uris(text)


def error(message: str) -> None:
    """One readable line on stderr, with any credentials in it redacted."""
    err_console.print(f"[bold red]error:[/] {redact(message)}", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {redact(message)}", highlight=False, soft_wrap=True)
