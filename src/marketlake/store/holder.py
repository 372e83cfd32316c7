"""Who holds an embedded store: the server discovery file and DuckDB's lock holder.

DuckDB lets one process open a database file for writing. While ``marketlake
serve`` (or ``demo``) holds one, it writes ``<database>.server.json`` beside it
(owner-only, mode 0600) with its loopback URL, its pid, the host name and a
random token; other processes of the same user find the server there and work
through it. The file is removed when the server exits; one left by a killed
server is stale (its pid is gone) and ignored. The format is documented in
``docs/cli.md`` ("Beside a running server").

When the holder is not a server, :func:`lock_holder` reads its pid from DuckDB's
lock error and its command line from ``/proc``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from marketlake.errors import ConfigError

FORMAT_VERSION = 1
SUFFIX = ".server.json"
_LOCK = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


@dataclass(frozen=True, slots=True)
class ServerFile:
    """What a running server wrote beside its database."""

    url: str
    pid: int
    host: str
    token: str
    store: str
    started_at: str
    version: int = FORMAT_VERSION


def path_of(uri: str) -> str:
    """The file path of a ``duckdb:///path`` URI (``:memory:`` for memory)."""
    rest = uri.split(":", 1)[1]
    if not rest.startswith("//"):
        raise ConfigError(f"store URI {uri!r} must look like duckdb:///path/to/file.duckdb")
    path = rest[2:]
    if path.startswith(("/./", "/:memory:")):
        path = path[1:]
    if path.startswith("//"):  # duckdb:////abs/path, as SQLAlchemy writes absolute paths
        path = path[1:]
    return path or ":memory:"


def database_path(uri: str) -> Path | None:
    """The absolute database file of a ``duckdb:///…`` URI (None for anything else)."""
    if not uri.startswith("duckdb:"):
        return None
    try:
        path = path_of(uri)
    except ConfigError:
        return None
    if ":memory:" in path:
        return None
    return Path(path).expanduser().resolve()


def server_file_path(database: Path) -> Path:
    return database.with_name(database.name + SUFFIX)


def new_token() -> str:
    """A random bearer token for the local server (never stored elsewhere)."""
    return "mls_" + secrets.token_urlsafe(32)


def write_server_file(uri: str, url: str, token: str) -> Path | None:
    """Write the discovery file of ``uri`` (0600, atomically); None when not a file store."""
    database = database_path(uri)
    if database is None:
        return None
    info = ServerFile(
        url=url.rstrip("/"),
        pid=os.getpid(),
        host=socket.gethostname(),
        token=token,
        store=f"duckdb:///{database}",
        started_at=datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    )
    target = server_file_path(database)
    temp = target.with_name(f".{target.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(asdict(info), out)
    os.replace(temp, target)
    return target


def remove_server_file(path: Path, token: str) -> None:
    """Remove ``path`` if it is still ours (another server may have replaced it)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        if json.loads(path.read_text(encoding="utf-8"))["token"] == token:
            path.unlink()


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def read_server_file(path: Path) -> ServerFile | None:
    """The server described by ``path``, or None when missing, malformed or stale."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        info = ServerFile(**data)
    except (OSError, ValueError, TypeError):
        return None
    if info.version != FORMAT_VERSION or info.host != socket.gethostname():
        return None
    if not pid_alive(info.pid) or info.pid == os.getpid():
        return None
    return info


def find_server(uri: str) -> ServerFile | None:
    """The live server holding the embedded store ``uri``, if any."""
    database = database_path(uri)
    if database is None:
        return None
    return read_server_file(server_file_path(database))


def command_of(pid: int) -> str:
    """The command line of process ``pid`` (empty when it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def lock_holder(message: str) -> tuple[int, str] | None:
    """``(pid, command)`` of the process named in DuckDB's lock error, if it names one."""
    found = _LOCK.search(message)
    if found is None:
        return None
    pid = int(found["pid"])
    return pid, command_of(pid) or found["exe"]
