"""``marketlake serve``: the REST API (and dashboard) with uvicorn."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from marketlake.cli.app import state
from marketlake.cli.output import console
from marketlake.config import Settings
from marketlake.errors import ConfigError

if TYPE_CHECKING:
    from marketlake.store import Store


if TYPE_CHECKING:
    from fastapi import FastAPI

FACTORY = "marketlake.cli.serve:app_from_env"


def app_from_env() -> FastAPI:
    """uvicorn's factory for several workers: the API app with the CLI route."""
    from marketlake.api.app import app_from_env as make
    from marketlake.cli._server import install

    app = make()
    install(app)
    return app


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so the URL is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _local_url(host: str, port: int) -> str | None:
    """The loopback URL other processes on this machine reach the server at, if any."""
    if host in ("0.0.0.0", "", "::"):
        return f"http://127.0.0.1:{port}"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"http://127.0.0.1:{port}" if host == "localhost" else None
    if not address.is_loopback:
        return None
    return f"http://[{host}]:{port}" if address.version == 6 else f"http://{host}:{port}"


def run_server(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int = 1,
    store: Store | None = None,
    log_format: str = "json",
) -> None:
    """Serve the API until interrupted; ``store`` (one worker only) is reused as is."""
    import uvicorn

    from marketlake.api.app import create_app
    from marketlake.api.observability import configure_logging

    if workers > 1 and settings.store.startswith("duckdb:"):
        raise ConfigError(
            f"--workers {workers}: the embedded DuckDB store can be opened by one process only; "
            "use --workers 1, or a PostgreSQL store (MARKETLAKE_STORE=postgresql://…) for more"
        )
    _check_free(host, port)
    configure_logging(settings.log_level, json=log_format == "json")
    options = {
        "log_config": None,
        "access_log": False,
        # X-Forwarded-For/-Proto only from the configured proxies: anyone else could
        # rotate the header to dodge the per-address rate limit
        "proxy_headers": bool(settings.api_trusted_proxies),
        "forwarded_allow_ips": ",".join(settings.api_trusted_proxies) or "",
        "server_header": False,
    }
    if workers > 1:
        _announce(host, port)
        os.environ["MARKETLAKE_STORE"] = settings.store
        os.environ["MARKETLAKE_LOG_JSON"] = "1" if log_format == "json" else "0"
        uvicorn.run(FACTORY, factory=True, workers=workers, host=host, port=port, **options)  # type: ignore[arg-type]
        return
    from marketlake.cli._server import install
    from marketlake.store.holder import new_token, remove_server_file, write_server_file

    sock = _bind(host, port)
    port = sock.getsockname()[1]
    url = _local_url(host, port)
    token = new_token() if url is not None else None
    app = create_app(settings, store, freeze_gc=True, local_token=token)
    install(app)
    discovery = write_server_file(settings.store, url, token) if url and token else None
    _announce(host, port)
    try:
        server = uvicorn.Server(uvicorn.Config(app, **options))  # type: ignore[arg-type]
        server.run(sockets=[sock])
    finally:
        if discovery is not None and token is not None:
            remove_server_file(discovery, token)
        with contextlib.suppress(OSError):
            sock.close()


def _announce(host: str, port: int) -> None:
    console.print(
        f"MarketLake serving on [bold]http://{host}:{port}/[/]  (API docs at "
        f"http://{host}:{port}/docs; Ctrl-C stops)",
        highlight=False,
    )


def _check_free(host: str, port: int) -> None:
    """A port that is out of range or taken is one clear line (exit 2), before uvicorn
    prints that it serves there."""
    import socket

    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is not a TCP port; use 1-65535 (MARKETLAKE_API_PORT)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot bind to host {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port "
                "or stop what uses it"
            ) from None


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (MARKETLAKE_API_HOST).")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (MARKETLAKE_API_PORT).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes (MARKETLAKE_API_WORKERS); more than 1 needs PostgreSQL."
        ),
    ] = None,
    log_format: Annotated[
        Literal["json", "console"],
        typer.Option("--log-format", help="json (one JSON object per line) or console."),
    ] = "json",
) -> None:
    """Serve the REST API under /api/v1, /metrics, /docs and the dashboard at /."""
    st = state(ctx)
    settings = st.settings
    run_server(
        settings,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers or settings.api_workers,
        log_format=log_format,
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
