"""``POST /api/v1/cli``: the server's side of :mod:`marketlake.cli.remote`.

Imported only by ``marketlake serve`` (the CLI's other commands do not pay for
FastAPI): ``install(app)`` adds the route to an app made by ``create_app``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from marketlake.api.app import API_PREFIX
from marketlake.api.deps import ContextDep, ReadAccess
from marketlake.cli.app import RUNNING_FOR, Caller, cli
from marketlake.cli.remote import LOCAL_ONLY, NO_STORE, SERVER_FILES, scope_of, stream_command
from marketlake.errors import InputError

router = APIRouter(tags=["cli"])


class Terminal(BaseModel):
    """How the caller's stdout or stderr renders: a terminal, its width, its colours."""

    tty: bool = False
    width: int = Field(80, ge=20, le=1000)
    color: str | None = None


class CliRequest(BaseModel):
    """One command line to run, as the caller typed it after ``marketlake``."""

    argv: list[str] = Field(..., min_length=1, max_length=200)
    cwd: str | None = Field(None, description="The caller's working directory (local callers)")
    out: Terminal = Terminal()
    err: Terminal = Terminal()


@router.post(
    "/cli",
    summary="Run a marketlake command (the CLI beside a server, or with --api)",
    response_class=StreamingResponse,
)
async def run_command(body: CliRequest, principal: ReadAccess, ctx: ContextDep) -> Any:
    """Run the command line ``argv`` on this server's store and stream what it prints.

    The answer is frames: one byte (1 stdout, 2 stderr, 3 exit code), a 4-byte
    big-endian length and the payload. A caller with the local token (the discovery
    file beside an embedded store) may run any command and name files relative to
    ``cwd``; any other caller needs the scope of the command's API routes (reads:
    read, writes: write, keys: admin) and cannot name files.
    """
    words = [a for a in body.argv if not a.startswith("-")]
    name = words[0] if words else ""
    if name in LOCAL_ONLY or name in NO_STORE:
        raise InputError(f"`marketlake {name}` cannot run through the server", param="argv")
    local = principal.kind == "local"
    if not local:
        principal.require(scope_of(body.argv))
        if name in SERVER_FILES:
            raise InputError(f"`marketlake {name}` cannot run through --api", param="argv")
    caller = Caller(
        settings=ctx.settings,
        store=ctx.store,
        cwd=Path(body.cwd) if local and body.cwd else None,
        bus=_in_process(ctx.open_bus),
    )
    return StreamingResponse(
        stream_command(body.argv, caller, body.out.model_dump(), body.err.model_dump(), _run_for),
        media_type="application/vnd.marketlake.cli-frames",
    )


def install(app: FastAPI) -> None:
    """Add ``POST /api/v1/cli`` to ``app``."""
    app.include_router(router, prefix=API_PREFIX)


def _run_for(argv: list[str], caller: Caller) -> int:
    """The CLI, run for ``caller`` (its files, its terminal) inside this server."""
    RUNNING_FOR.set(caller)
    return cli(argv)


def _in_process(bus: Any) -> Any:
    """The server's bus when commands may read it from their own thread: the in-process
    one (its live feed states); a Redis bus belongs to the server's event loop."""
    from marketlake.stream.bus import MemoryBus

    return bus if isinstance(bus, MemoryBus) else None
