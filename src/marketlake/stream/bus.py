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

import asyncio
import functools
import hashlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from marketlake.config import Settings
from marketlake.errors import ConfigError
from marketlake.stream.events import RAW_TOPIC, TOPICS, Batch


@dataclass(frozen=True, slots=True)
class Message:
    """One bus entry: its id, topic, payload and (Redis) the stream key it came from."""

    id: str
    topic: str
    payload: Any
    key: str = ""


@functools.lru_cache(maxsize=65_536)
def shard_of(symbol: str, shards: int) -> int:
    """The raw-topic shard of a symbol (stable across processes).

    BLAKE2b, not CRC-32: CRC is linear, so symbols differing in one character
    (``S0USDT`` … ``S7USDT``) share their low bits and would all land on one shard.
    """
    digest = hashlib.blake2b(symbol.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


class Consumer(ABC):
    """A member of a consumer group on the raw topic."""

    name: str

    @abstractmethod
    async def fetch(self, count: int, block_ms: int) -> list[Message]:
        """Up to ``count`` entries, waiting at most ``block_ms`` for the first."""

    @abstractmethod
    async def ack(self, messages: Sequence[Message]) -> None:
        """Mark entries processed; unacknowledged ones are delivered again."""

    def owns(self, symbol: str) -> bool:
        """Whether this member currently processes ``symbol`` (Redis moves shards)."""
        return True

    def rebalance_due(self) -> bool:
        """Whether the next :meth:`fetch` may give shards away (finish writes first)."""
        return False

    async def close(self) -> None:  # noqa: B027 - optional hook: nothing to leave in-process
        """Leave the group."""


class Bus(ABC):
    """Publish batches and events; consume in groups; tail topics."""

    uri: str

    @abstractmethod
    async def publish(self, batches: Sequence[Batch]) -> list[str]:
        """Publish batches on the raw topic (stamped with the publish time); their ids."""

    @abstractmethod
    async def publish_event(self, topic: str, data: dict[str, Any]) -> str:
        """Publish one JSON object on ``metrics`` or ``alerts``; its id."""

    @abstractmethod
    async def consumer(self, group: str, name: str) -> Consumer:
        """Join ``group`` on the raw topic as ``name``."""

    @abstractmethod
    def tail(self, topic: str, after: str | None = None) -> AsyncIterator[Message]:
        """Entries of ``topic`` after id ``after`` (default: from now on), forever."""

    @abstractmethod
    async def set_status(self, name: str, data: dict[str, Any]) -> None:
        """Record the state of a component (a feed) for readiness and the CLI."""

    @abstractmethod
    async def statuses(self) -> dict[str, dict[str, Any]]:
        """Every recorded component state."""

    async def ping(self) -> None:  # noqa: B027 - optional hook: in-process is always there
        """Raise if the bus is unreachable."""

    async def close(self) -> None:  # noqa: B027 - optional hook: in-process holds no connection
        """Release connections."""


def check_topic(topic: str) -> str:
    if topic not in TOPICS:
        raise ConfigError(f"unknown topic {topic!r}; topics are {', '.join(TOPICS)}")
    return topic


class MemoryConsumer(Consumer):
    """A member of an in-process group: reads the group's bounded queue."""

    def __init__(self, name: str, queue: asyncio.Queue[Message]) -> None:
        self.name = name
        self.queue = queue

    async def fetch(self, count: int, block_ms: int) -> list[Message]:
        try:
            first = await asyncio.wait_for(self.queue.get(), block_ms / 1000)
        except TimeoutError:
            return []
        messages = [first]
        while len(messages) < count and not self.queue.empty():
            messages.append(self.queue.get_nowait())
        return messages

    async def ack(self, messages: Sequence[Message]) -> None:
        for _ in messages:
            self.queue.task_done()


class MemoryBus(Bus):
    """The in-process bus of the embedded mode (``memory://``)."""

    def __init__(self, *, queue_size: int = 256, ring_size: int = 10_000) -> None:
        self.uri = "memory://"
        self.queue_size = queue_size
        self._groups: dict[str, asyncio.Queue[Message]] = {}
        self._rings: dict[str, deque[Message]] = {t: deque(maxlen=ring_size) for t in TOPICS}
        self._signals: dict[str, asyncio.Event] = {}
        self._statuses: dict[str, dict[str, Any]] = {}
        self._seq = 0

    def _append(self, topic: str, payload: Any) -> Message:
        self._seq += 1
        message = Message(str(self._seq), topic, payload)
        self._rings[topic].append(message)
        signal = self._signals.pop(topic, None)
        if signal is not None:
            signal.set()
        return message

    async def publish(self, batches: Sequence[Batch]) -> list[str]:
        ids = []
        for batch in batches:
            message = self._append(RAW_TOPIC, batch.stamped())
            for queue in self._groups.values():
                await queue.put(message)
            ids.append(message.id)
        return ids

    async def publish_event(self, topic: str, data: dict[str, Any]) -> str:
        return self._append(check_topic(topic), data).id

    async def consumer(self, group: str, name: str) -> Consumer:
        queue = self._groups.get(group)
        if queue is None:
            queue = self._groups[group] = asyncio.Queue(self.queue_size)
        return MemoryConsumer(name, queue)

    async def drain(self) -> None:
        """Wait until every group has acknowledged everything published."""
        for queue in self._groups.values():
            await queue.join()

    async def tail(self, topic: str, after: str | None = None) -> AsyncIterator[Message]:
        ring = self._rings[check_topic(topic)]
        last = int(after) if after else (int(ring[-1].id) if ring else 0)
        while True:
            signal = self._signals.setdefault(topic, asyncio.Event())
            fresh = _newest(ring, last)
            if not fresh:
                await signal.wait()
                continue
            for message in fresh:
                last = int(message.id)
                yield message

    async def set_status(self, name: str, data: dict[str, Any]) -> None:
        self._statuses[name] = data

    async def statuses(self) -> dict[str, dict[str, Any]]:
        return dict(self._statuses)


def _newest(ring: deque[Message], after: int) -> list[Message]:
    """Entries of ``ring`` with an id above ``after``, oldest first (reads from the end)."""
    out: list[Message] = []
    for message in reversed(ring):
        if int(message.id) <= after:
            break
        out.append(message)
    out.reverse()
    return out


def open_bus(settings: Settings) -> Bus:
    """The bus ``settings.bus`` names; an unknown scheme raises :class:`ConfigError`."""
    uri = settings.bus
    if uri.startswith("memory:"):
        return MemoryBus(queue_size=settings.bus_queue_size)
    if uri.startswith(("redis:", "rediss:", "unix:")):
        from marketlake.stream.redisbus import RedisBus

        return RedisBus(uri, prefix=settings.bus_prefix, shards=settings.bus_shards,
                        maxlen=settings.bus_maxlen, lease_ttl_s=settings.worker_lease_ttl_s)
    raise ConfigError(f"unknown bus URI {uri!r}: use memory:// or redis://host:6379/0 "
                      "(set MARKETLAKE_BUS)")
