"""The in-process bus of the embedded mode (``memory://``).

Each group's queue is bounded: when the consumer falls behind, ``publish`` waits, so a
slow consumer slows the producer instead of growing memory. Readers of ``tail`` never
slow anyone: they read a bounded ring of recent entries and skip what fell out of it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

from marketlake.stream.bus.base import Bus, Consumer, Message, check_topic
from marketlake.stream.events import RAW_TOPIC, TOPICS, Batch


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
