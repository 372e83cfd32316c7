"""The ``marketlake`` command line.

Command groups live in their own modules and register themselves here.
Errors from the exception tree become one readable line on stderr and the exit
codes of DESIGN.md (0 ok, 1 failure, 2 bad usage or input); ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from pydantic import ValidationError
from typer.core import TyperOption

from marketlake import __version__
from marketlake.cli.output import error
from marketlake.config import Settings
from marketlake.errors import ConfigError, MarketLakeError

if TYPE_CHECKING:
    from marketlake.store import Store


def _flag_aware_type(option: TyperOption, ctx: Any) -> str | None:
    """Typer's help shows ``<bool>`` after every flag (``--json <bool>``), though a flag
    takes no value: show none for flags, and the type (or choices) for the rest."""
    return None if option.is_flag else _typer_display_type(option, ctx)


_typer_display_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_aware_type  # type: ignore[method-assign,assignment]

app = typer.Typer(
    name="marketlake",
    help="MarketLake: ingest, validate, store, roll up, serve and backtest market data.\n\n"
    "Start with `marketlake demo` (offline), then `marketlake bars SYMBOL`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class State:
    """What every command gets: the settings and a store opened on first use."""

    settings: Settings
    debug: bool = False
    _store: Store | None = field(default=None, repr=False)

    @property
    def store(self) -> Store:
        if self._store is None:
            from marketlake.store import open_store

            self._store = open_store(self.settings.store)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def state(ctx: typer.Context) -> State:
    """The :class:`State` of the running command."""
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj


def _version(value: bool) -> None:
    if value:
        typer.echo(f"marketlake {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="MARKETLAKE_STORE",
            help="Store URI: duckdb:///FILE, duckdb:///:memory: or postgresql://…",
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    try:
        settings = Settings(store=store) if store else Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(
            f"setting MARKETLAKE_{str(first['loc'][0]).upper()}: {first['msg']}"
        ) from None
    ctx.obj = State(settings=settings, debug=debug)
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    """Every module of ``marketlake.cli`` with a ``register(app)`` function adds its commands."""
    import importlib
    import pkgutil

    import marketlake.cli as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"marketlake.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register()


def cli(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code (used by ``main`` and the tests)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="marketlake", standalone_mode=False)
    except (typer.Exit, click.exceptions.Exit) as exc:
        return int(exc.exit_code)
    except (typer.Abort, click.exceptions.Abort):
        error("aborted")
        return 130
    except (typer.TyperException, click.ClickException) as exc:
        return _usage_error(exc)
    except MarketLakeError as exc:
        if debug:
            raise
        error(exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    return result if isinstance(result, int) else 0


def _usage_error(exc: Exception) -> int:
    """A usage error (unknown option, bad value …) as one line, exit code 2."""
    format_message = getattr(exc, "format_message", None)
    message = format_message() if callable(format_message) else str(exc)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    error(f"{message}{hint}")
    code = getattr(exc, "exit_code", 2)
    return 2 if code in (None, 1, 2) else int(code)


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli())
