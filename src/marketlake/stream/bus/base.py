"""The bus contract: messages, consumers, topics and shards (see :mod:`marketlake.stream.bus`)."""

from __future__ import annotations

import functools
import hashlib
import random
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from marketlake.errors import ConfigError
from marketlake.stream.events import TOPICS, Batch


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


def backoff(failures: int, *, initial: float = 0.05, cap: float = 5.0) -> float:
    """The wait before reconnect attempt ``failures`` (1, 2, …): exponential, half jittered."""
    delay = min(cap, initial * 2.0 ** min(failures - 1, 30))
    return delay / 2 + random.random() * delay / 2


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

    def must_release(self) -> bool:
        """Whether this member holds more than its share (Redis): store and acknowledge
        what was read, then call :meth:`release_surplus`."""
        return False

    async def release_surplus(self) -> None:  # noqa: B027 - optional hook: in-process has no shards
        """Give back the shards above this member's share."""

    async def abandon(self) -> None:  # noqa: B027 - optional hook: nothing to stop in-process
        """Stop background work after the connection was lost (no network calls)."""

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
