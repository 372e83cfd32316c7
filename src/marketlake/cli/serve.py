"""``marketlake serve``: the REST API (and dashboard) with uvicorn.

With ``--stream PROVIDER:SYMBOLS`` and ``--schedule FILE`` the live feed (with the
stream pipeline: bars, analytics, alerts) and the ingestion scheduler run inside the
server process, on its store and its bus: on the embedded DuckDB store, which one
process only may open, this is how live data and the API run on one machine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from marketlake.cli.app import state
from marketlake.cli.output import console
from marketlake.errors import ConfigError, InputError, MarketLakeError

if TYPE_CHECKING:
    import asyncio
    import socket

    from fastapi import FastAPI

    from marketlake.config import Settings
    from marketlake.store import Store
    from marketlake.stream.windows import Schedule

GRACEFUL_SHUTDOWN_S = 5.0
"""Open streams (SSE) get this long to end after Ctrl-C before they are cut."""


@dataclass(frozen=True, slots=True)
class Live:
    """What runs inside the server beside the API: a live feed and/or scheduled ingests."""

    feed: str | None = None
    symbols: tuple[str, ...] = ()
    windows: Schedule | None = None
    jobs: list[Any] = field(default_factory=list)
    schedule_file: Path | None = None


def parse_stream(value: str) -> tuple[str, tuple[str, ...]]:
    """``binance:BTCUSDT,ETHUSDT`` → ``("binance", ("BTCUSDT", "ETHUSDT"))``; bad: InputError."""
    from marketlake.schema import normalize_symbol
    from marketlake.stream.live import FEEDS

    feeds = ", ".join(sorted(FEEDS))
    provider, colon, names = value.partition(":")
    provider = provider.strip().lower()
    if not colon or not provider:
        raise InputError(
            f"--stream {value!r}: give PROVIDER:SYMBOLS, e.g. binance:BTCUSDT,ETHUSDT",
            param="stream",
        )
    if provider not in FEEDS:
        raise InputError(
            f"--stream {value!r}: no live feed {provider!r}; live feeds: {feeds} "
            "(e.g. binance:BTCUSDT,ETHUSDT)",
            param="stream",
        )
    symbols: list[str] = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        try:
            symbol = normalize_symbol(name)
        except (InputError, ValueError) as exc:
            raise InputError(f"--stream {value!r}: {exc}", param="stream") from None
        if symbol not in symbols:
            symbols.append(symbol)
    if not symbols:
        raise InputError(
            f"--stream {value!r}: no symbols; list them after the colon, "
            f"e.g. {provider}:BTCUSDT,ETHUSDT",
            param="stream",
        )
    return provider, tuple(symbols)


def prepare_live(
    settings: Settings,
    *,
    stream: str | None,
    schedule: Path | None,
    alerts: Path | None,
) -> tuple[Settings, Live | None]:
    """Check ``--stream``, ``--schedule`` and ``--alerts`` before anything is served.

    Every problem is one :class:`InputError` (exit 2). Returns the settings the server
    runs with (``--alerts`` sets the alert rules file) and what runs beside the API.
    """
    if alerts is not None:
        if not alerts.is_file():
            raise ConfigError(
                f"--alerts {alerts}: no such file; give an alert rules YAML file "
                "(see config/alert_rules.yml and docs/streaming.md#alerts)"
            )
        settings = settings.model_copy(update={"alert_rules_file": alerts})
    if stream is None and schedule is None:
        if alerts is not None:
            raise InputError(
                "--alerts needs --stream: alert rules run on the live feed "
                "(e.g. --stream binance:BTCUSDT --alerts FILE)",
                param="alerts",
            )
        return settings, None
    feed, symbols = parse_stream(stream) if stream is not None else (None, ())
    jobs: list[Any] = []
    if schedule is not None:
        from marketlake.ingest.scheduler import load_schedule

        if not schedule.is_file():
            raise ConfigError(
                f"--schedule {schedule}: no such file; give an ingestion schedule YAML "
                "file such as config/ingestion_schedule.yml"
            )
        jobs = load_schedule(schedule)
    windows = None
    if feed is not None:
        from marketlake.stream.alerts import load_rule_file
        from marketlake.stream.portfolio import Portfolio
        from marketlake.stream.windows import Schedule

        load_rule_file(settings.alert_rules_path())
        Portfolio.load(settings.config_dir / "portfolio.yml")
        windows = Schedule.load(schedule or settings.config_dir / "ingestion_schedule.yml")
    return settings, Live(feed, symbols, windows, jobs, schedule)


def _attach_live(app: FastAPI, settings: Settings, live: Live, bus: Any) -> None:
    """Run ``live`` during the app's lifespan: started once the store is open, stopped
    (the feed flushed, the worker's queue stored, running ingests finished) before the
    store and the bus close."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        try:
            async with inner(application) as maybe_state, _running(application, settings, live):
                yield maybe_state
        finally:
            await bus.close()

    app.router.lifespan_context = lifespan


@contextlib.asynccontextmanager
async def _running(app: Any, settings: Settings, live: Live) -> AsyncIterator[None]:
    import asyncio

    ctx = app.state.ctx
    stop = asyncio.Event()
    feed_task: asyncio.Task[Any] | None = None
    scheduler: Any = None
    if live.feed is not None:
        from marketlake.stream.bus import MemoryBus
        from marketlake.stream.live import run_stream

        bus = ctx.bus
        in_process = isinstance(bus, MemoryBus)
        feed_task = asyncio.create_task(
            run_stream(
                settings,
                bus,
                live.feed,
                live.symbols,
                stop=stop,
                store=ctx.store if in_process else None,
                schedule=live.windows,
            ),
            name="marketlake-feed",
        )
        feed_task.add_done_callback(_report_end)
    if live.jobs:
        from marketlake.ingest.scheduler import Runner, build_scheduler

        scheduler = build_scheduler(live.jobs, Runner(ctx.store, settings))
        scheduler.start()
    try:
        yield
    finally:
        stop.set()
        if scheduler is not None:
            await asyncio.to_thread(scheduler.shutdown, True)  # running ingests finish
        if feed_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):  # _report_end logged it
                await feed_task


def _report_end(task: asyncio.Task[Any]) -> None:
    import logging

    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        message = exc.message if isinstance(exc, MarketLakeError) else repr(exc)
        ours = isinstance(exc, MarketLakeError)
        logging.getLogger("marketlake.serve").error(
            "the live feed stopped: %s", message, exc_info=None if ours else exc
        )


def _describe(settings: Settings, live: Live) -> None:
    from marketlake.config import redact

    if live.feed is not None:
        where = settings.binance_ws_url if live.feed == "binance" else live.feed
        windows = "always" if live.windows is None or live.windows.always else "in its windows"
        rules = settings.alert_rules_path()
        if settings.bus.startswith("memory:"):
            shown = rules if rules.exists() else "no rule file"
            goes = (
                f"trades, 1m bars, analytics and alerts ({shown}) go to the store and to "
                "/api/v1/stream/live and /api/v1/alerts/stream"
            )
        else:
            goes = (
                f"published to {redact(settings.bus)}; `marketlake worker` processes build "
                "bars, analytics and alerts"
            )
        console.print(
            f"live: {live.feed} {', '.join(live.symbols)} from {redact(where)} ({windows}); "
            + goes,
            highlight=False,
            soft_wrap=True,
        )
    if live.jobs:
        console.print(
            f"scheduler: {len(live.jobs)} ingest jobs from {live.schedule_file} "
            "(`marketlake scheduler --list --config FILE` shows when they run)",
            highlight=False,
            soft_wrap=True,
        )


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
    import socket

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
    import ipaddress

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
    live: Live | None = None,
) -> None:
    """Serve the API until interrupted; ``store`` (one worker only) is reused as is.

    ``live``: a feed and/or scheduled ingests to run in this process (one worker only)."""
    import uvicorn

    from marketlake.api.app import create_app
    from marketlake.api.observability import configure_logging

    if workers > 1 and settings.store.startswith("duckdb:"):
        raise ConfigError(
            f"--workers {workers}: the embedded DuckDB store can be opened by one process only; "
            "use --workers 1, or a PostgreSQL store (MARKETLAKE_STORE=postgresql://…) for more"
        )
    if workers > 1 and live is not None:
        raise ConfigError(
            f"--workers {workers}: --stream and --schedule run inside the one server process; "
            "use --workers 1, or run `marketlake stream` and `marketlake scheduler` beside "
            "a PostgreSQL server"
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
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
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
    bus = None
    if live is not None:
        from marketlake.stream.bus import open_bus

        bus = open_bus(settings, "api")
    app = create_app(settings, store, bus, freeze_gc=True, local_token=token)
    install(app)
    if live is not None:
        _attach_live(app, settings, live, bus)
    discovery = write_server_file(settings.store, url, token) if url and token else None
    _announce(host, port)
    if live is not None:
        _describe(settings, live)
    previous = _exit_on_sigterm()
    try:
        server = _ending_streams(uvicorn.Server)(uvicorn.Config(app, **options))  # type: ignore[arg-type]
        server.run(sockets=[sock])
    finally:
        _restore_sigterm(previous)
        if discovery is not None and token is not None:
            remove_server_file(discovery, token)
        with contextlib.suppress(OSError):
            sock.close()


def _exit_on_sigterm() -> Any:
    """After a graceful shutdown uvicorn raises the signal that stopped it again; with
    SIGTERM's default action (``docker stop``, systemd, ``kill``) the process would then
    die before its clean-up and leave the discovery file behind. Raise SystemExit (143,
    as a shell reports a SIGTERM) instead, so the ``finally`` blocks run."""
    import signal
    import threading

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, stop)


def _restore_sigterm(previous: Any) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _ending_streams(base: type[Any]) -> type[Any]:
    """uvicorn's server that ends the open SSE streams when it starts shutting down:
    Ctrl-C does not wait for browsers to hang up (nor cut them after a timeout)."""

    class Server(base):  # type: ignore[misc]
        async def shutdown(self, sockets: Any = None) -> None:
            ctx = getattr(getattr(self.config.app, "state", None), "ctx", None)
            if ctx is not None:
                ctx.streams.close()
            await super().shutdown(sockets=sockets)

    return Server


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
    stream: Annotated[
        str | None,
        typer.Option(
            "--stream",
            metavar="PROVIDER:SYMBOLS",
            help="Run a live feed in the server, e.g. binance:BTCUSDT,ETHUSDT: trades and "
            "1m bars, analytics and alerts are stored and streamed (SSE) by this server. "
            "The feed connects to MARKETLAKE_BINANCE_WS_URL, only inside the windows of "
            "the --schedule file (or config/ingestion_schedule.yml), if it has any.",
        ),
    ] = None,
    schedule: Annotated[
        Path | None,
        typer.Option(
            "--schedule",
            metavar="FILE",
            help="Run the ingestion schedule of FILE (e.g. config/ingestion_schedule.yml) "
            "in the server, as `marketlake scheduler` would.",
        ),
    ] = None,
    alerts: Annotated[
        Path | None,
        typer.Option(
            "--alerts",
            metavar="FILE",
            help="Alert rules YAML for --stream (default: config/alert_rules.yml; "
            "MARKETLAKE_ALERT_RULES_FILE).",
        ),
    ] = None,
) -> None:
    """Serve the REST API under /api/v1, /metrics, /docs and the dashboard at /.

    On the embedded store (one process only may open the DuckDB file) the live feed and
    the ingestion scheduler run inside the server: `--stream binance:BTCUSDT,ETHUSDT`,
    `--schedule config/ingestion_schedule.yml`. Other `marketlake` commands on the same
    store run through the server meanwhile.

    Example: `marketlake serve --stream binance:BTCUSDT,ETHUSDT --schedule
    config/ingestion_schedule.yml`
    """
    st = state(ctx)
    settings, live = prepare_live(st.settings, stream=stream, schedule=schedule, alerts=alerts)
    run_server(
        settings,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers or settings.api_workers,
        log_format=log_format,
        live=live,
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
