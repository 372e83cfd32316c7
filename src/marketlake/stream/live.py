"""``marketlake stream``: run a live feed into the bus (and, in-process, the worker too).

With the ``memory://`` bus the worker pipeline (bars, analytics, alerts,
persistence) runs in the same process, fed through the bounded in-process
queue; with ``redis://`` the feed only publishes and ``marketlake worker``
processes run elsewhere. The feed's connection state is recorded on the bus
(``feed:<name>``) for ``/ready``, the metrics and the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from marketlake.config import Settings
from marketlake.errors import InputError
from marketlake.store.base import Store
from marketlake.stream.binance import BinanceFeed, FeedState
from marketlake.stream.bus import Bus, MemoryBus
from marketlake.stream.windows import Schedule
from marketlake.stream.worker import GROUP, Worker, WorkerStats

FEEDS = {BinanceFeed.name: BinanceFeed}


@dataclass(slots=True)
class LiveResult:
    """How a ``stream`` run ended: the feed state and, in-process, the worker's counts."""

    feed: FeedState
    worker: WorkerStats | None = None


def feed_class(provider: str) -> type[BinanceFeed]:
    try:
        return FEEDS[provider.lower()]
    except KeyError:
        raise InputError(
            f"no live feed for provider {provider!r}; live feeds: {', '.join(sorted(FEEDS))}",
            param="provider",
        ) from None


async def run_stream(
    settings: Settings,
    bus: Bus,
    provider: str,
    symbols: Sequence[str],
    *,
    stop: asyncio.Event,
    store: Store | None = None,
    schedule: Schedule | None = None,
    client: httpx.AsyncClient | None = None,
    on_status: Callable[[FeedState], None] | None = None,
    **feed_options: Any,
) -> LiveResult:
    """Stream until ``stop``; with an in-process bus and a store, run the worker as well.

    On stop the feed publishes what it buffered and, in-process, the worker
    finishes everything queued before it stops.
    """
    cls = feed_class(provider)
    if not symbols:
        raise InputError("give at least one symbol, e.g. BTCUSDT", param="symbols")
    worker: Worker | None = None
    worker_task: asyncio.Task[WorkerStats] | None = None
    worker_stop = asyncio.Event()
    if isinstance(bus, MemoryBus) and store is not None:
        worker = Worker(settings, store, bus, block_ms=100)
        consumer = await bus.consumer(GROUP, worker.stats.name)
        worker_task = asyncio.create_task(worker.run(worker_stop, consumer))

    async def status(state: FeedState) -> None:
        await bus.set_status(f"feed:{state.feed}", state.as_dict())
        if on_status is not None:
            on_status(state)

    feed = cls(
        settings,
        symbols,
        bus.publish,
        client=client,
        schedule=schedule,
        status=status,
        **feed_options,
    )
    try:
        state = await feed.run(stop)
    finally:
        if worker_task is not None:
            assert isinstance(bus, MemoryBus)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(bus.drain(), 60)
            worker_stop.set()
            await worker_task
    return LiveResult(state, worker.stats if worker is not None else None)
