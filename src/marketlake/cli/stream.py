"""Live data: ``stream``, ``worker``, ``replay`` and ``metrics``."""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from marketlake.cli.app import state
from marketlake.cli.output import console, emit_json, redact, show_table, stdout
from marketlake.errors import ConfigError, InputError

if TYPE_CHECKING:
    from marketlake.config import Settings


if TYPE_CHECKING:
    from marketlake.stream.binance import FeedState

# The stream modules (websockets, redis, httpx …) are imported inside the commands:
# every other command starts faster without them.

Duration = Annotated[
    float | None,
    typer.Option(
        "--duration", help="Stop after this many seconds (default: run until Ctrl-C or SIGTERM)."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
_FEED_COLUMNS = (
    "feed",
    "state",
    "messages",
    "trades",
    "bars",
    "malformed",
    "unknown",
    "reconnects",
    "planned_reconnects",
    "stalls",
    "backfilled_bars",
    "last_message_age_s",
    "last_error",
)


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _metrics_server(port: int, *collectors: Any) -> None:
    from marketlake.stream.prometheus import serve_metrics

    try:
        serve_metrics(port, *collectors)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve Prometheus metrics on port {port}: {exc}; set "
            "MARKETLAKE_METRICS_PORT to a free port, or 0 for none"
        ) from None


def _reachable(bus: Any) -> None:
    """Refuse at start a Redis bus that does not answer (down, wrong port, bad db index):
    once running, a worker or feed rides out an outage, but a wrong URL is a mistake."""
    import asyncio

    from marketlake.errors import BusError
    from marketlake.stream.bus.redis import RedisBus

    if not isinstance(bus, RedisBus):
        return

    async def ping() -> str | None:
        try:
            await asyncio.wait_for(bus.ping(), timeout=10)
        except BusError as exc:
            return str(exc.__cause__ or exc)
        except TimeoutError:
            return "no answer in 10 s"
        finally:
            await bus.close()
        return None

    problem = asyncio.run(ping())
    if problem is not None:
        raise ConfigError(
            f"cannot reach the bus {redact(bus.uri)}: {redact(problem).rstrip('.')}; "
            "start Redis or fix MARKETLAKE_BUS (redis://HOST:6379/0; the db index "
            "is 0-15 by default)",
            param="bus",
        )


def stream(
    ctx: typer.Context,
    provider: Annotated[str, typer.Argument(help="Live feed: binance.")],
    symbols: Annotated[list[str], typer.Argument(help="Symbols, e.g. BTCUSDT ETHUSDT.")],
    window: Annotated[
        list[str] | None,
        typer.Option(
            "--window",
            help="Only connect in this UTC window, HH:MM-HH:MM (repeatable); default: "
            "config/ingestion_schedule.yml, or always.",
        ),
    ] = None,
    duration: Duration = None,
    as_json: AsJson = False,
) -> None:
    """Stream live trades and 1m bars to the bus (with memory:// also run the worker here).

    Example: `marketlake stream binance BTCUSDT ETHUSDT --window 08:00-16:30`
    """
    import asyncio

    from marketlake.stream.bus import MemoryBus, open_bus
    from marketlake.stream.live import feed_class, run_stream
    from marketlake.stream.prometheus import FeedCollector
    from marketlake.stream.windows import Schedule
    from marketlake.stream.worker import install_stop_signals

    st = state(ctx)
    settings = st.settings
    feed_class(provider)
    schedule = (
        Schedule.parse(window)
        if window
        else Schedule.load(settings.config_dir / "ingestion_schedule.yml")
    )
    _reachable(open_bus(settings, "feed"))
    bus = open_bus(settings, "feed")
    store = st.store if isinstance(bus, MemoryBus) else None
    _logging(settings)
    latest: list[FeedState] = []
    _metrics_server(settings.metrics_port, FeedCollector(lambda: latest[-1:]))
    shown = {"state": ""}

    def on_status(feed: FeedState) -> None:
        latest[:] = [feed]
        if feed.state != shown["state"] and not as_json:
            shown["state"] = feed.state
            console.print(
                f"[bold]{feed.feed}[/] {feed.state}"
                + (f" ({feed.last_error})" if feed.last_error else ""),
                highlight=False,
            )

    async def main() -> Any:
        stop = asyncio.Event()
        install_stop_signals(stop)
        if duration is not None:
            asyncio.get_running_loop().call_later(duration, stop.set)
        try:
            return await run_stream(
                settings,
                bus,
                provider,
                symbols,
                stop=stop,
                store=store,
                schedule=schedule,
                on_status=on_status,
            )
        finally:
            await bus.close()

    result = asyncio.run(main())
    feed = result.feed.as_dict()
    worker = (
        None
        if result.worker is None
        else {
            k: getattr(result.worker, k)
            for k in ("events", "trades_inserted", "bars_inserted", "alerts")
        }
    )
    if as_json:
        emit_json({"feed": feed, "worker": worker})
        return
    show_table([feed], _FEED_COLUMNS, title="Feed")
    if worker is not None:
        show_table([worker], tuple(worker), title="Worker (in-process)", numeric=tuple(worker))


def worker(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="Consumer name (default: host-pid).")] = None,
    duration: Duration = None,
    as_json: AsJson = False,
) -> None:
    """Consume the bus: build bars, run analytics and alerts, store everything.

    Several workers share the load (one Redis consumer group); SIGTERM finishes the
    entries in flight, acknowledges them and exits.
    """
    import asyncio

    from marketlake.stream.bus import MemoryBus, open_bus
    from marketlake.stream.bus.redis import RedisBus
    from marketlake.stream.prometheus import WorkerCollector, redis_backlog
    from marketlake.stream.worker import GROUP, Worker, run_worker

    st = state(ctx)
    settings = st.settings
    bus = open_bus(settings, "worker")
    if isinstance(bus, MemoryBus):
        raise InputError(
            "`marketlake worker` consumes a shared bus: set MARKETLAKE_BUS="
            "redis://HOST:6379/0 (with memory://, `marketlake stream` runs the "
            "worker in its own process)",
            param="bus",
        )
    _logging(settings)
    job = Worker(settings, st.store, bus, name=name)  # checks the alert rules first
    _reachable(open_bus(settings, "worker"))
    assert isinstance(bus, RedisBus)
    _metrics_server(
        settings.metrics_port,
        WorkerCollector(lambda: job.stats.lag_s, redis_backlog(bus.uri, bus.raw_keys(), GROUP)),
    )
    if not as_json:
        console.print(
            f"worker {job.stats.name} consuming {redact(bus.uri)} "
            f"({len(job.pipeline.engine.rules.rules)} alert rules)",
            highlight=False,
        )
    stats = asyncio.run(run_worker(job, duration_s=duration))
    row = {
        k: getattr(stats, k)
        for k in (
            "name",
            "rounds",
            "entries",
            "events",
            "trades_inserted",
            "bars_inserted",
            "alerts",
        )
    }
    if as_json:
        emit_json(row)
    else:
        show_table([row], tuple(row), title="Worker", numeric=tuple(row)[1:])


def replay(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="Symbol to replay.")],
    timeframe: Annotated[str, typer.Option("--timeframe", "-t", help="Bar size.")] = "1m",
    start: Annotated[str | None, typer.Option(help="From (inclusive), ISO date or time.")] = None,
    end: Annotated[str | None, typer.Option(help="To (exclusive).")] = None,
    speed: Annotated[
        float,
        typer.Option(
            help="Times real time, 0.01 to 1,000,000 (60: a 1m bar per second); "
            "0: as fast as possible."
        ),
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Send stored bars through the live analytics and alerts; print metrics and alerts.

    Example: `marketlake replay BTCUSDT -t 1m --start 2024-03-04 --end 2024-03-05`
    """
    import asyncio

    from marketlake.stream.replay import replay as replay_events
    from marketlake.timeseries.times import resolve_range

    st = state(ctx)
    begin, stop = resolve_range(start, end, None, required=False)
    counts = {"bars": 0, "alerts": 0}

    async def main() -> None:
        async for event in replay_events(
            st.store, st.settings, symbol, timeframe, begin, stop, speed=speed
        ):
            counts["bars" if event["type"] == "bar" else "alerts"] += 1
            if as_json:
                stdout().write(json.dumps(event) + "\n")
            else:
                _print_replay(event)

    asyncio.run(main())
    if not as_json:
        console.print(f"{counts['bars']} bars, {counts['alerts']} alerts", highlight=False)


def _print_replay(event: dict[str, Any]) -> None:
    if event["type"] == "alert":
        console.print(f"[bold yellow]ALERT[/] {event['ts']} {event['message']}", highlight=False)
        return
    m = event["metrics"]
    console.print(
        f"{event['ts']}  close {event['bar']['close']:<12.6g} "
        f"ret {_pct(m['return'])}  vol {_pct(m['volatility'])}  "
        f"dd {_pct(m['drawdown'])}  mdd {_pct(m['max_drawdown'])}",
        highlight=False,
    )


def _pct(value: float | None) -> str:
    return "     -  " if value is None else f"{value * 100:+7.2f}%"


METRIC_COLUMNS = (
    "price",
    "return",
    "volatility",
    "drawdown",
    "max_drawdown",
    "rolling_max_drawdown",
    "vwap",
    "volume",
    "unrealized_pnl",
)


def metrics(
    ctx: typer.Context,
    symbols: Annotated[list[str] | None, typer.Argument(help="Only these symbols.")] = None,
    as_json: AsJson = False,
) -> None:
    """Latest analytics per symbol, the live feeds' connection state and the portfolio."""
    import asyncio

    from marketlake.stream.portfolio import Portfolio

    st = state(ctx)
    wanted = {s.upper() for s in symbols or []}
    per_symbol: dict[str, dict[str, Any]] = {}
    for row in st.store.latest_metrics():
        if wanted and row["symbol"] not in wanted:
            continue
        entry = per_symbol.setdefault(row["symbol"], {"symbol": row["symbol"], "ts": row["ts"]})
        entry[row["name"]] = row["value"]
        entry["ts"] = max(entry["ts"], row["ts"])
    for symbol in sorted(wanted - set(per_symbol)):
        st.store.instrument(symbol)  # neither metrics nor registered: NotFoundError, exit 2
    statuses = asyncio.run(_statuses(st.settings, st.bus))
    feeds = [v for k, v in statuses.items() if k.startswith("feed:")]
    workers = [v for k, v in statuses.items() if k.startswith("worker:")]
    prices = {s: v["price"] for s, v in per_symbol.items() if v.get("price") is not None}
    portfolio = Portfolio.load(st.settings.config_dir / "portfolio.yml").valuation(prices)
    if as_json:
        emit_json(
            {
                "metrics": list(per_symbol.values()),
                "feeds": feeds,
                "workers": workers,
                "portfolio": portfolio,
            }
        )
        return
    show_table(
        per_symbol.values(),
        ("symbol", "ts", *METRIC_COLUMNS),
        title="Metrics",
        numeric=METRIC_COLUMNS,
    )
    if feeds:
        show_table(feeds, _FEED_COLUMNS, title="Feeds")
    if workers:
        show_table(
            workers, ("name", "state", "events", "alerts", "lag_s", "rules_error"), title="Workers"
        )
    if portfolio["positions"]:
        show_table(
            portfolio["positions"],
            (
                "symbol",
                "quantity",
                "average_price",
                "price",
                "market_value",
                "unrealized_pnl",
                "unrealized_pnl_pct",
            ),
            title="Portfolio",
            numeric=(
                "quantity",
                "average_price",
                "price",
                "market_value",
                "unrealized_pnl",
                "unrealized_pnl_pct",
            ),
        )


async def _statuses(settings: Settings, served: Any = None) -> dict[str, dict[str, Any]]:
    """Feed and worker states: from the bus of the server this runs in (its in-process
    feed), else from the bus the settings name."""
    from marketlake.errors import BusError
    from marketlake.stream.bus import open_bus

    if served is not None:
        found: dict[str, dict[str, Any]] = await served.statuses()
        return found
    bus = open_bus(settings)
    try:
        await bus.ping()
    except BusError as exc:
        await bus.close()
        raise ConfigError(
            f"cannot reach the bus {redact(settings.bus)}: "
            f"{redact(str(exc.__cause__ or exc)).rstrip('.')}; start Redis or fix "
            "MARKETLAKE_BUS (redis://HOST:6379/0)",
            param="bus",
        ) from None
    try:
        return await bus.statuses()
    finally:
        await bus.close()


def register(app: typer.Typer) -> None:
    app.command("stream")(stream)
    app.command("worker")(worker)
    app.command("replay")(replay)
    app.command("metrics")(metrics)
