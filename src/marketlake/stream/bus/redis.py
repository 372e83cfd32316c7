"""The Redis Streams bus (``redis://``): consumer groups, acks, reclaiming, trimming.

Keys (all under ``bus_prefix``): ``market-data-raw:{0..shards-1}`` (the raw
topic split by symbol), ``metrics``, ``alerts``, ``status`` (a hash of feed
states), ``members`` and ``lease:{shard}`` (consumer-group membership).

Why shards and leases: analytics and bar building are sequential per symbol,
so one symbol must be processed by one worker at a time. Every worker joins
the same consumer group and holds a time-limited lease on its share of the
shards (``ceil(shards / live workers)``). A worker that dies stops renewing;
after ``worker_lease_ttl_s`` another worker takes its shards and first
reclaims their pending, unacknowledged entries with ``XAUTOCLAIM``, then
reads on. Entries are acknowledged after processing; the store's idempotent
writes make a redelivered entry harmless. Streams are trimmed with
``XADD … MAXLEN ~``.

Each entry carries a whole :class:`~marketlake.stream.events.Batch` (hundreds
of events as Arrow IPC): one ``XADD`` and one ``XACK`` per batch is what makes
tens of thousands of events per second possible with the pure-Python client,
while an event is still acknowledged only after it was processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from marketlake.errors import BusError
from marketlake.stream.bus.base import Bus, Consumer, Message, backoff, check_topic, shard_of
from marketlake.stream.events import (
    RAW_TOPIC,
    Batch,
    decode_batch,
    decode_json,
    encode_batch,
    encode_json,
)

log = logging.getLogger(__name__)
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end"
)


class RedisBus(Bus):
    """Redis Streams with consumer groups, sharded by symbol on the raw topic."""

    def __init__(
        self,
        uri: str,
        *,
        prefix: str = "marketlake:",
        shards: int = 8,
        maxlen: int = 200_000,
        lease_ttl_s: float = 10.0,
        client_name: str | None = None,
    ) -> None:
        self.uri = uri
        self.prefix = prefix
        self.shards = shards
        self.maxlen = maxlen
        self.lease_ttl_s = lease_ttl_s
        self.client_name = client_name
        # Every connection carries the client name (``CLIENT LIST`` shows who is who);
        # redis-py reconnects and retries a failed command a few times by itself, and
        # what still fails reaches the callers as RedisError, which reconnect with backoff.
        self.redis: Any = aioredis.Redis.from_url(  # redis-py's async types are unions
            uri,
            client_name=client_name,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 2),
            retry_on_error=[RedisConnectionError],
        )

    def key(self, topic: str, shard: int | None = None) -> str:
        return f"{self.prefix}{topic}" if shard is None else f"{self.prefix}{topic}:{shard}"

    def raw_keys(self) -> list[str]:
        return [self.key(RAW_TOPIC, s) for s in range(self.shards)]

    async def publish(self, batches: Sequence[Batch]) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        for batch in batches:
            key = self.key(RAW_TOPIC, shard_of(batch.symbol, self.shards))
            pipe.xadd(
                key, {b"b": encode_batch(batch.stamped())}, maxlen=self.maxlen, approximate=True
            )
        try:
            ids = await pipe.execute()
        except RedisError as exc:
            raise BusError(f"cannot publish to {self.uri}: {exc}") from exc
        return [i.decode() for i in ids]

    async def publish_event(self, topic: str, data: dict[str, Any]) -> str:
        try:
            entry = await self.redis.xadd(
                self.key(check_topic(topic)),
                {b"j": encode_json(data)},
                maxlen=self.maxlen,
                approximate=True,
            )
        except RedisError as exc:
            raise BusError(f"cannot publish to {self.uri}: {exc}") from exc
        return str(entry.decode())

    async def consumer(self, group: str, name: str) -> Consumer:
        consumer = ShardConsumer(self, group, name)
        await consumer.start()
        return consumer

    async def tail(self, topic: str, after: str | None = None) -> AsyncIterator[Message]:
        topic = check_topic(topic)
        keys = self.raw_keys() if topic == RAW_TOPIC else [self.key(topic)]
        if after and topic != RAW_TOPIC:
            ids = {keys[0]: after}
        else:
            ids = {k: await self._last_id(k) for k in keys}
        failures = 0
        while True:
            try:
                response = await self.redis.xread(ids, count=500, block=1000)
            except (RedisError, OSError) as exc:  # dropped: go on from the last ids seen
                failures += 1
                delay = backoff(failures)
                log.warning("redis tail of %s: %s; reconnecting in %.1f s", topic, exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            for key, entries in response or ():
                name = key.decode()
                for entry_id, fields in entries:
                    ids[name] = entry_id.decode()
                    yield Message(ids[name], topic, _payload(fields), name)

    async def _last_id(self, key: str) -> str:
        failures = 0
        while True:
            try:
                newest = await self.redis.xrevrange(key, count=1)
            except (RedisError, OSError) as exc:
                failures += 1
                log.warning("redis tail of %s: %s; reconnecting", key, exc)
                await asyncio.sleep(backoff(failures))
                continue
            return str(newest[0][0].decode()) if newest else "0-0"

    async def set_status(self, name: str, data: dict[str, Any]) -> None:
        try:
            await self.redis.hset(self.key("status"), name, encode_json(data))
        except (RedisError, OSError) as exc:
            raise BusError(f"cannot record a status on {self.uri}: {exc}") from exc

    async def statuses(self) -> dict[str, dict[str, Any]]:
        try:
            raw = await self.redis.hgetall(self.key("status"))
        except (RedisError, OSError) as exc:
            raise BusError(f"cannot read statuses from {self.uri}: {exc}") from exc
        return {k.decode(): decode_json(v) for k, v in raw.items()}

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise BusError(f"bus {self.uri} is not reachable: {exc}") from exc

    async def close(self) -> None:
        await self.redis.aclose()


def _payload(fields: dict[bytes, bytes]) -> Any:
    if b"b" in fields:
        return decode_batch(fields[b"b"])
    return decode_json(fields[b"j"])


class ShardConsumer(Consumer):
    """A consumer-group member that processes the raw-topic shards it holds leases on."""

    def __init__(self, bus: RedisBus, group: str, name: str) -> None:
        self.bus = bus
        self.group = group
        self.name = name
        self.owned: set[int] = set()
        self.reclaimed = 0
        self._redis: Any = bus.redis
        self._ttl_ms = int(bus.lease_ttl_s * 1000)
        self._backlog: list[Message] = []
        self._next_balance = 0.0
        self._target = bus.shards
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def _lease(self, shard: int) -> str:
        return self.bus.key("lease", shard)

    async def start(self) -> None:
        """Join the group: create it if needed, take shards, reclaim their open entries.

        A member that lost its connection starts again under the same name: it
        takes back the shards it still holds and reclaims its own open entries.
        """
        try:
            await self._start()
        except (RedisError, OSError) as exc:
            raise BusError(f"cannot join the consumer group on {self.bus.uri}: {exc}") from exc

    async def _start(self) -> None:
        for key in self.bus.raw_keys():
            try:
                await self._redis.xgroup_create(key, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        await self._join()
        await self._balance()
        self._heartbeat = asyncio.create_task(self._beat())

    async def _now_ms(self) -> int:
        seconds, micros = await self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def _join(self) -> None:
        await self._redis.zadd(
            self.bus.key("members"), {self.name: await self._now_ms() + self._ttl_ms}
        )

    async def _beat(self) -> None:
        """Renew membership and leases every third of the lease time, until closed.

        The loop ends on the closing event rather than relying on cancellation alone:
        a cancel that lands inside a redis-py command can be absorbed by the client.
        """
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._ttl_ms / 3000)
                return
            with contextlib.suppress(RedisError, OSError):
                await self._join()
                for shard in list(self.owned):
                    if not await self._renew(
                        keys=[self._lease(shard)], args=[self.name, self._ttl_ms]
                    ):
                        self.owned.discard(shard)  # lost: another worker has it now

    async def _balance(self) -> None:
        """Hold ``ceil(shards / live members)`` shards: take free ones, note the extras.

        Extras are only given back by :meth:`release_surplus`, which the worker calls
        once the writes of what it read from them are stored and acknowledged.
        """
        members = self.bus.key("members")
        await self._redis.zremrangebyscore(members, "-inf", await self._now_ms())
        alive = max(1, await self._redis.zcard(members))
        self._target = target = math.ceil(self.bus.shards / alive)
        free = [s for s in range(self.bus.shards) if s not in self.owned]
        random.shuffle(free)
        for shard in free:
            if len(self.owned) >= target:
                break
            lease = self._lease(shard)
            # Ours already when this member reconnects before its lease expired.
            if await self._redis.set(
                lease, self.name, nx=True, px=self._ttl_ms
            ) or await self._renew(keys=[lease], args=[self.name, self._ttl_ms]):
                self.owned.add(shard)
                await self._reclaim(shard)
        self._next_balance = time.monotonic() + self._ttl_ms / 3000

    def must_release(self) -> bool:
        return len(self.owned) > self._target

    async def release_surplus(self) -> None:
        try:
            for shard in sorted(self.owned)[self._target :]:
                await self._release(keys=[self._lease(shard)], args=[self.name])
                self.owned.discard(shard)
        except (RedisError, OSError) as exc:
            raise BusError(f"cannot give shards back on {self.bus.uri}: {exc}") from exc

    async def _reclaim(self, shard: int) -> None:
        """Take over the pending entries of whoever held the shard before (XAUTOCLAIM)."""
        key = self.bus.key(RAW_TOPIC, shard)
        start = "0-0"
        while True:
            start_next, entries, *_ = await self._redis.xautoclaim(
                key, self.group, self.name, min_idle_time=0, start_id=start, count=100
            )
            for entry_id, fields in entries:
                if fields:  # trimmed entries come back empty
                    self._backlog.append(
                        Message(entry_id.decode(), RAW_TOPIC, _payload(fields), key)
                    )
                    self.reclaimed += 1
            start = start_next.decode() if isinstance(start_next, bytes) else str(start_next)
            if start == "0-0":
                return

    async def fetch(self, count: int, block_ms: int) -> list[Message]:
        try:
            return await self._fetch(count, block_ms)
        except (RedisError, OSError) as exc:
            raise BusError(f"cannot read from {self.bus.uri}: {exc}") from exc

    async def _fetch(self, count: int, block_ms: int) -> list[Message]:
        if time.monotonic() >= self._next_balance:
            await self._balance()
        if self._backlog:
            taken, self._backlog = self._backlog[:count], self._backlog[count:]
            return taken
        if not self.owned:
            await asyncio.sleep(block_ms / 1000)
            return []
        streams = {self.bus.key(RAW_TOPIC, s): ">" for s in sorted(self.owned)}
        response = await self._redis.xreadgroup(
            self.group, self.name, streams, count=count, block=block_ms
        )
        messages: list[Message] = []
        for key, entries in response or ():
            name = key.decode()
            messages.extend(
                Message(entry_id.decode(), RAW_TOPIC, _payload(fields), name)
                for entry_id, fields in entries
            )
        return messages

    async def ack(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        pipe = self._redis.pipeline(transaction=False)
        for message in messages:
            pipe.xack(message.key, self.group, message.id)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BusError(f"cannot acknowledge on {self.bus.uri}: {exc}") from exc

    def owns(self, symbol: str) -> bool:
        return shard_of(symbol, self.bus.shards) in self.owned

    async def abandon(self) -> None:
        """Stop renewing without a word to Redis (the connection is gone): what this
        member holds is taken back by a new consumer of the same name, or expires."""
        self._closing.set()
        if self._heartbeat is not None:
            _, pending = await asyncio.wait({self._heartbeat}, timeout=self._ttl_ms / 1000)
            for task in pending:
                task.cancel()

    async def close(self) -> None:
        """Give every lease back and leave (a clean exit needs no lease expiry)."""
        await self.abandon()
        try:
            for shard in list(self.owned):
                await self._release(keys=[self._lease(shard)], args=[self.name])
            await self._redis.zrem(self.bus.key("members"), self.name)
        except (RedisError, OSError) as exc:  # the leases expire by themselves
            log.warning("leaving the consumer group on %s failed: %s", self.bus.uri, exc)
        self.owned.clear()
