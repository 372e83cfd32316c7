"""The event bus: ``memory://`` (in-process) or ``redis://`` (Redis Streams), by URI.

Topics: ``market-data-raw`` (batches of trades and bars, see :mod:`events`),
``metrics`` and ``alerts`` (JSON objects). Two ways to read:

* :meth:`Bus.consumer` joins a consumer group on the raw topic: each entry goes
  to one member, which acknowledges it after processing (work sharing).
* :meth:`Bus.tail` follows a topic from an id onwards (every reader sees every
  entry): what the SSE endpoints use; ids make ``Last-Event-ID`` resumable.

The in-process bus bounds each group's queue: when the consumer falls behind,
``publish`` waits, so a slow consumer slows the producer instead of growing
memory. Readers of :meth:`Bus.tail` never slow anyone: they read a bounded ring
of recent entries and skip what fell out of it.
"""

from __future__ import annotations

import os

from marketlake.config import Settings
from marketlake.errors import ConfigError
from marketlake.stream.bus.base import Bus, Consumer, Message, check_topic, shard_of
from marketlake.stream.bus.memory import MemoryBus, MemoryConsumer

__all__ = [
    "Bus",
    "Consumer",
    "MemoryBus",
    "MemoryConsumer",
    "Message",
    "check_topic",
    "open_bus",
    "shard_of",
]


def open_bus(settings: Settings, role: str = "client") -> Bus:
    """The bus ``settings.bus`` names; an unknown scheme raises :class:`ConfigError`.

    On Redis every connection is named ``{bus_prefix}{role}-{pid}`` (``CLIENT LIST``
    shows which process holds which connection; ``CLIENT KILL ID`` can drop one).
    """
    uri = settings.bus
    if uri.startswith("memory:"):
        return MemoryBus(queue_size=settings.bus_queue_size)
    if uri.startswith(("redis:", "rediss:", "unix:")):
        from marketlake.stream.bus.redis import RedisBus

        return RedisBus(
            uri,
            prefix=settings.bus_prefix,
            shards=settings.bus_shards,
            maxlen=settings.bus_maxlen,
            lease_ttl_s=settings.worker_lease_ttl_s,
            client_name="".join(
                c if c.isprintable() and not c.isspace() else "_"
                for c in f"{settings.bus_prefix}{role}-{os.getpid()}"
            ),
        )
    raise ConfigError(
        f"unknown bus URI {uri!r}: use memory:// or redis://host:6379/0 (set MARKETLAKE_BUS)"
    )
