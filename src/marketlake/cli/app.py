"""The ``marketlake`` command line.

Command groups live in their own modules and register themselves here.
Errors from the exception tree become one readable line on stderr and the exit
codes of docs/cli.md (0 ok, 1 failure, 2 bad usage or input); ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import sys
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.main
from typer.core import TyperOption

from marketlake import __version__
from marketlake.cli.output import err_console, error
from marketlake.errors import ConfigError, InputError, MarketLakeError, StoreLockedError

if TYPE_CHECKING:
    from marketlake.config import Settings
    from marketlake.store import Store


def _flag_aware_type(option: TyperOption, ctx: Any) -> str | None:
    """Typer's help shows ``<bool>`` after every flag (``--json <bool>``), though a flag
    takes no value: show none for flags, and the type (or choices) for the rest."""
    return None if option.is_flag else _typer_display_type(option, ctx)


_typer_display_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_aware_type  # type: ignore[method-assign,assignment]


class _ParamsOnce(threading.local):
    """Typer reads each command's signature twice in a row while it builds the command
    tree (for the parameters, then for the callback), evaluating every annotation each
    time: the second read takes the first's result (a fifth of `marketlake --help`).
    Only that immediate repeat is served; any other read is Typer's own."""

    def __init__(self) -> None:
        self.held: tuple[Any, Any] | None = None

    def __call__(self, func: Any) -> Any:
        held, self.held = self.held, None
        if held is not None and held[0] is func:
            return held[1]
        params = _typer_params(func)
        self.held = (func, params)
        return params


_typer_params = typer.main.get_params_from_function  # type: ignore[attr-defined]
typer.main.get_params_from_function = _ParamsOnce()  # type: ignore[attr-defined]

app = typer.Typer(
    name="marketlake",
    help="MarketLake: ingest, validate, store, roll up, serve and backtest market data.\n\n"
    "Start with `marketlake demo` (offline), then `marketlake bars SYMBOL`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass(frozen=True, slots=True)
class Caller:
    """A command run inside a server for a CLI elsewhere (see :mod:`marketlake.cli.remote`).

    ``cwd`` is the caller's working directory when it runs on this machine (files
    named on its command line are read and written there); None for a remote caller.
    """

    settings: Settings
    store: Store
    cwd: Path | None
    bus: Any = None  # the server's event bus: live feed states for `metrics`


RUNNING_FOR: ContextVar[Caller | None] = ContextVar("marketlake_cli_caller", default=None)


@dataclass
class State:
    """What every command gets: the settings and a store opened on first use."""

    settings: Settings
    debug: bool = False
    wait_s: float = 0.0
    cwd: Path | None = None
    remote: bool = False
    bus: Any = None  # inside a server: its event bus (not closed by the command)
    command: str = ""
    _store: Store | None = field(default=None, repr=False)
    _owns_store: bool = field(default=True, repr=False)

    @property
    def store(self) -> Store:
        if self._store is None:
            words = self.command.split()
            if not {" ".join(words[:1]), " ".join(words[:2])} & CREATES_STORE:
                _require_existing(self.settings.store)
            self._store = _open_waiting(self.settings.store, self.wait_s)
        return self._store

    def path(self, path: Path) -> Path:
        """A file named on the command line, relative to the caller's working directory."""
        if self.remote:
            raise InputError(
                f"{path}: files cannot be read or written through --api (the server does "
                "not see this machine's files); run the command where the file is, or use "
                "stdout (e.g. --format csv > FILE)"
            )
        if self.cwd is None or path.is_absolute():
            return path
        return self.cwd / path

    def close(self) -> None:
        if self._store is not None and self._owns_store:
            self._store.close()
        self._store = None


# Commands that may create the embedded store; every other one reads an existing store
# and refuses a DuckDB path that does not exist (a typo would show an empty store).
CREATES_STORE = frozenset(
    {
        "backtest portfolio",
        "backtest run",
        "backtest sweep",
        "backtest walk-forward",
        "demo",
        "import-csv",
        "import-lake",
        "ingest",
        "instruments add",
        "keys create",
        "migrate",
        "scheduler",
        "serve",
        "stream",
        "worker",
    }
)


def _command_of(ctx: typer.Context) -> str:
    """The command being run, as ``"bars"`` or ``"instruments add"`` (group and subcommand)."""
    from marketlake.cli.remote import _after

    name = ctx.invoked_subcommand or ""
    following = [a for a in _after(list(ARGV.get()), name) if not a.startswith("-")]
    return f"{name} {following[0]}" if following else name


def _require_existing(uri: str, option: str = "--store (MARKETLAKE_STORE)") -> None:
    """Refuse a ``duckdb:///FILE`` whose file does not exist, naming it and the fix."""
    from marketlake.store.holder import database_path

    path = database_path(uri)
    if path is not None and not path.exists():
        raise ConfigError(
            f"no DuckDB store at {path}: create one with `marketlake demo`, `marketlake "
            f"ingest …` or `marketlake import-csv …`, or point {option} at an existing file"
        )


def _open_waiting(uri: str, wait_s: float) -> Store:
    """Open the store; while another process holds it, retry for up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    said = False
    from marketlake.store import open_store

    while True:
        try:
            return open_store(uri)
        except StoreLockedError as exc:
            if time.monotonic() >= deadline:
                raise
            if not said:
                from marketlake.store.holder import command_of

                err_console.print(
                    f"waiting up to {wait_s:g} s for process {exc.pid} "
                    f"({command_of(exc.pid or 0) or 'unknown'}) to release the store",
                    highlight=False,
                    soft_wrap=True,
                )
                said = True
            time.sleep(0.2)


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
    api: Annotated[
        str | None,
        typer.Option(
            "--api",
            envvar="MARKETLAKE_API",
            help="Run the command on the MarketLake server at this URL (with MARKETLAKE_API_KEY).",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="MARKETLAKE_API_KEY",
            help="API key for --api (scope read, write or admin as the command needs).",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            help="Seconds to wait for another process holding the embedded store to let go.",
        ),
    ] = 0.0,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    caller = RUNNING_FOR.get()
    if caller is not None:  # inside a server, for a CLI elsewhere: the server's store
        ctx.obj = State(
            settings=caller.settings,
            debug=debug,
            cwd=caller.cwd,
            remote=caller.cwd is None,
            bus=caller.bus,
            _store=caller.store,
            _owns_store=False,
        )
        ctx.call_on_close(ctx.obj.close)
        return
    from marketlake.config import SettingsInvalid, load_settings  # pydantic: not for --help

    try:
        settings = load_settings(store=store) if store else load_settings()
    except SettingsInvalid as exc:
        raise ConfigError(str(exc)) from None
    from marketlake.cli import remote

    remote.route(ctx, settings, api=api, api_key=api_key, command_line=list(ARGV.get()))
    ctx.obj = State(settings=settings, debug=debug, wait_s=wait, command=_command_of(ctx))
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    """Every module of ``marketlake.cli`` with a ``register(app)`` function adds its commands."""
    import importlib
    import pkgutil

    import marketlake.cli as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # helpers of a command, imported when it runs
            continue
        module = importlib.import_module(f"marketlake.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register()


ARGV: ContextVar[tuple[str, ...]] = ContextVar("marketlake_cli_argv", default=())


def cli(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code (used by ``main`` and the tests)."""
    args = sys.argv[1:] if argv is None else argv
    ARGV.set(tuple(args))
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="marketlake", standalone_mode=False)
    except _click_errors("Exit") as exc:
        return int(exc.exit_code)
    except _click_errors("Abort"):
        error("aborted")
        return 130
    except _click_errors("ClickException") as exc:
        return _usage_error(exc)
    except MarketLakeError as exc:
        if debug:  # the traceback, and still the error's own exit code
            import traceback

            traceback.print_exc()
        else:
            error(exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    return result if isinstance(result, int) else 0


def _click_errors(name: str) -> tuple[type[Any], ...]:
    """Typer's exception ``name`` (Exit, Abort, ClickException), and Click's where it is
    loaded: Typer 0.2x carries its own copy of Click, so Click (20 ms) is imported only
    by older Typer versions, and only then can Click's exceptions be raised."""
    own = {"Exit": typer.Exit, "Abort": typer.Abort, "ClickException": typer.TyperException}
    click = sys.modules.get("click")
    if click is None:
        return (own[name],)
    return own[name], getattr(click.exceptions, name)


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
