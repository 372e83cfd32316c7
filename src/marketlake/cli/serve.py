"""``marketlake serve``: the REST API (and dashboard) with uvicorn."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from marketlake.cli.app import state
from marketlake.cli.output import console
from marketlake.config import Settings
from marketlake.errors import ConfigError

if TYPE_CHECKING:
    from marketlake.store import Store


FACTORY = "marketlake.api.app:app_from_env"


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
    console.print(
        f"MarketLake serving on [bold]http://{host}:{port}/[/]  (API docs at "
        f"http://{host}:{port}/docs; Ctrl-C stops)",
        highlight=False,
    )
    options = {
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        # X-Forwarded-For/-Proto only from the configured proxies: anyone else could
        # rotate the header to dodge the per-address rate limit
        "proxy_headers": bool(settings.api_trusted_proxies),
        "forwarded_allow_ips": ",".join(settings.api_trusted_proxies) or "",
        "server_header": False,
    }
    if workers > 1:
        os.environ["MARKETLAKE_STORE"] = settings.store
        os.environ["MARKETLAKE_LOG_JSON"] = "1" if log_format == "json" else "0"
        uvicorn.run(FACTORY, factory=True, workers=workers, **options)  # type: ignore[arg-type]
    else:
        uvicorn.run(create_app(settings, store, freeze_gc=True), **options)  # type: ignore[arg-type]


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
