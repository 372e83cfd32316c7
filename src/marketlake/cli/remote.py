"""Running CLI commands through a server: beside ``marketlake serve``, or with ``--api URL``.

DuckDB lets one process open a database file. While ``marketlake serve`` (or
``demo``) holds the embedded store it writes a discovery file beside it
(:mod:`marketlake.store.holder`); every other ``marketlake`` command on that
store then sends its command line to the server, which runs the very same
command on its open store and streams back what it prints, and the exit code.
So the output, the exit codes and the messages are the same by construction,
not by a second implementation. Files named on the command line are read and
written in the caller's working directory (server and caller share the machine).

With ``--api URL`` (or ``MARKETLAKE_API``) the command runs on a deployed server
the same way, with ``MARKETLAKE_API_KEY``; each command needs the scope its API
routes need (``SCOPES``), and files on the command line are refused (the server
cannot see them: use stdout).

The answer of ``POST /api/v1/cli`` is a stream of frames: one byte (1 stdout,
2 stderr, 3 exit code), a 4-byte big-endian length, the payload.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, cast

import typer

from marketlake.errors import InputError, MarketLakeError, ServerUnreachableError

if TYPE_CHECKING:
    from rich.console import Console

    from marketlake.config import Settings

STDOUT, STDERR, EXIT = 1, 2, 3
_HEADER = struct.Struct(">BI")
ROUTE = "/api/v1/cli"

# Commands that cannot run through a server, and what to do instead ({url}, {pid}).
LOCAL_ONLY = {
    "serve": "a MarketLake server (pid {pid}) already serves this store at {url}; use it, "
    "or stop it first (Ctrl-C in its terminal, or `kill {pid}`)",
    "demo": "a MarketLake server (pid {pid}) already serves this store at {url}; open "
    "{url}/ , or stop the server first (Ctrl-C in its terminal, or `kill {pid}`) to rerun "
    "the demo",
    "migrate": "`marketlake migrate` cannot run through the server (pid {pid}) at {url}: "
    "stop the server (Ctrl-C in its terminal, or `kill {pid}`), then migrate",
    "stream": "`marketlake stream` cannot run beside the server (pid {pid}) on the embedded "
    "store: stop the server and run `marketlake serve --stream binance:SYMBOLS`, or use "
    "PostgreSQL and Redis",
    "worker": "`marketlake worker` cannot run beside the server (pid {pid}) on the embedded "
    "store: use PostgreSQL and Redis (MARKETLAKE_STORE, MARKETLAKE_BUS)",
    "scheduler": "`marketlake scheduler` cannot run beside the server (pid {pid}) on the "
    "embedded store: stop the server and run `marketlake serve --schedule FILE`, or use "
    "PostgreSQL",
}
# Commands that never open the store: they run where they are typed.
NO_STORE = frozenset({"run-simple", "lake", "copy"})
# The scope a remote caller needs per command (or "group subcommand"); default write.
SCOPES = {
    "bars": "read",
    "actions": "read",
    "instruments list": "read",
    "instruments show": "read",
    "jobs": "read",
    "doctor": "read",
    "metrics": "read",
    "replay": "read",
    "backtest strategies": "read",
    "backtest show": "read",
    "backtest list": "read",
    "keys": "admin",
}
# Commands that read or write files on the server's side: not for remote callers.
SERVER_FILES = frozenset({"export", "import-lake"})
_GLOBAL_WITH_VALUE = frozenset({"--store", "--api", "--api-key", "--wait"})


# -- the calling side --------------------------------------------------------------


def route(
    ctx: typer.Context,
    settings: Settings,
    *,
    api: str | None,
    api_key: str | None,
    command_line: list[str],
) -> None:
    """Run the command through a server when one should answer it (then exit with its code).

    ``--api URL`` names the server; otherwise a live server holding the embedded store
    is found through its discovery file. Without either, the command runs here.
    """
    name = ctx.invoked_subcommand
    argv = list(command_line)
    if name is None or ctx.resilient_parsing:
        return
    rest = _after(argv, name)
    if any(a in ("--help", "-h") for a in rest) or name in NO_STORE:
        return
    if api:
        url, token, pid = api.rstrip("/"), api_key, None
        if name in LOCAL_ONLY or name in SERVER_FILES:
            raise InputError(
                f"`marketlake {name}` does not run through --api; run it on the server"
            )
    else:
        from marketlake.store.holder import find_server

        server = find_server(settings.store)
        if server is None:
            return
        url, token, pid = server.url, server.token, server.pid
        if name in LOCAL_ONLY:
            raise InputError(LOCAL_ONLY[name].format(url=url, pid=pid))
    debug = ["--debug"] if "--debug" in argv[: len(argv) - len(rest)] else []
    code = forward(url, token, [*debug, name, *rest], local=pid is not None, pid=pid)
    raise typer.Exit(code)


def _after(argv: list[str], name: str) -> list[str]:
    """The arguments after the command's name (the root's own options dropped)."""
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in _GLOBAL_WITH_VALUE:
            skip = True
        elif arg == name:
            return argv[i + 1 :]
    return []


def _terminal(console: Console) -> dict[str, Any]:
    return {"tty": console.is_terminal, "width": console.width, "color": console.color_system}


def forward(
    url: str, token: str | None, argv: list[str], *, local: bool, pid: int | None = None
) -> int:
    """Run ``argv`` on the server at ``url``, copying its output here; its exit code."""
    import httpx

    from marketlake.cli.output import console, err_console

    body = {
        "argv": argv,
        "cwd": os.getcwd() if local else None,
        "out": _terminal(console),
        "err": _terminal(err_console),
    }
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    where = f"the MarketLake server at {url}" + (f" (pid {pid})" if pid else "")
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(10.0, read=None), trust_env=not local) as client,
            client.stream("POST", url + ROUTE, json=body, headers=headers) as answer,
        ):
            if answer.status_code != 200:
                answer.read()
                raise _refused(answer.status_code, answer, where)
            return _copy(answer.iter_bytes())
    except httpx.TransportError as exc:
        fix = (
            f"stop it (`kill {pid}`) or remove the discovery file beside the store"
            if local
            else "check --api / MARKETLAKE_API"
        )
        raise ServerUnreachableError(f"{where} does not answer ({exc}); {fix}") from None


def _refused(status: int, answer: Any, where: str) -> MarketLakeError:
    """A refusal (bad key, missing scope, a command the server does not run) as one line."""
    try:
        detail = str(answer.json().get("detail") or answer.text)
    except ValueError:
        detail = answer.text.strip()[:200]
    if status == 404:
        return ServerUnreachableError(
            f"{where} cannot run CLI commands (HTTP 404: an older MarketLake, or not one)"
        )
    return InputError(f"{where} refused the command (HTTP {status}): {detail}")


def _copy(chunks: Iterator[bytes]) -> int:
    """Write the frames to this process's stdout and stderr; the exit code frame ends it."""
    out, err = sys.stdout.buffer, sys.stderr.buffer
    pending = b""
    for chunk in chunks:
        pending += chunk
        while len(pending) >= _HEADER.size:
            channel, size = _HEADER.unpack_from(pending)
            if len(pending) < _HEADER.size + size:
                break
            payload = pending[_HEADER.size : _HEADER.size + size]
            pending = pending[_HEADER.size + size :]
            if channel == EXIT:
                out.flush()
                err.flush()
                return int(payload)
            target = out if channel == STDOUT else err
            target.write(payload)
            target.flush()
    raise ServerUnreachableError("the server closed the connection before the command ended")


# -- the serving side --------------------------------------------------------------


class _Frames(io.RawIOBase):
    """A binary stream whose writes become frames on one channel."""

    def __init__(self, channel: int, push: Callable[[bytes], None]) -> None:
        super().__init__()
        self._channel = channel
        self._push = push

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        payload = bytes(data)
        if payload:
            self._push(_HEADER.pack(self._channel, len(payload)) + payload)
        return len(payload)


class _Text(io.TextIOBase):
    """A text stream over :class:`_Frames` (UTF-8), with ``.buffer`` for bytes."""

    def __init__(self, frames: _Frames, tty: bool) -> None:
        super().__init__()
        self.buffer = frames
        self._tty = tty

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._tty

    def write(self, text: str) -> int:
        self.buffer.write(text.encode("utf-8"))
        return len(text)


def _console(file: _Text, spec: dict[str, Any]) -> Console:
    from rich.console import Console

    width = spec.get("width")
    color = spec.get("color")
    return Console(
        file=cast("IO[str]", file),
        width=int(width) if isinstance(width, int) and 20 <= width <= 1000 else 80,
        color_system=color if color in ("standard", "256", "truecolor") else None,
        force_terminal=bool(spec.get("tty")),
        force_interactive=bool(spec.get("tty")),
        legacy_windows=False,
    )


def _run(
    argv: list[str],
    caller: Any,
    out: dict[str, Any],
    err: dict[str, Any],
    push: Callable[[bytes], None],
    run: Callable[[list[str], Any], int],
) -> None:
    """Run one command with its output in frames (in a thread of its own)."""
    from marketlake.cli.output import Streams, redirect

    stdout = _Text(_Frames(STDOUT, push), bool(out.get("tty")))
    stderr = _Text(_Frames(STDERR, push), bool(err.get("tty")))
    redirect(
        Streams(
            cast("IO[str]", stdout),
            cast("IO[bytes]", stdout.buffer),
            _console(stdout, out),
            _console(stderr, err),
            stderr.isatty(),
        )
    )
    code = 1
    try:
        code = run(argv, caller)
    except BaseException:  # noqa: BLE001 - --debug: the traceback goes to the caller
        import traceback

        stderr.write(traceback.format_exc())
    finally:
        push(_HEADER.pack(EXIT, len(str(code))) + str(code).encode())


def scope_of(argv: list[str]) -> str:
    """The scope a remote caller needs for ``argv`` (options first are skipped)."""
    words = [a for a in argv if not a.startswith("-")][:2]
    for key in (" ".join(words), words[0] if words else ""):
        if key in SCOPES:
            return SCOPES[key]
    return "write"


async def stream_command(
    argv: list[str],
    caller: Any,
    out: dict[str, Any],
    err: dict[str, Any],
    run: Callable[[list[str], Any], int],
) -> AsyncIterator[bytes]:
    """Run ``argv`` with ``run(argv, caller)`` (the CLI, which the server side passes in)
    in a thread, and yield its output as frames."""
    import asyncio

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
    gone = threading.Event()  # the caller went away: the command finishes unheard

    def push(frame: bytes | None) -> None:
        if gone.is_set():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed
            asyncio.run_coroutine_threadsafe(queue.put(frame), loop).result()

    def work() -> None:
        try:
            _run(argv, caller, out, err, push, run)
        finally:
            push(None)

    threading.Thread(target=work, name="marketlake-cli", daemon=True).start()
    try:
        while (frame := await queue.get()) is not None:
            yield frame
    finally:
        gone.set()
        while not queue.empty():
            queue.get_nowait()
