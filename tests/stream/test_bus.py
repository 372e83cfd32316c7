"""The event bus: in-process backpressure and tailing; Redis Streams groups, reclaim, trim."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from marketlake.config import Settings
from marketlake.errors import BusError, ConfigError
from marketlake.stream.bus import MemoryBus, Message, open_bus, shard_of
from marketlake.stream.bus.redis import RedisBus, ShardConsumer
from marketlake.stream.events import ALERTS_TOPIC, RAW_TOPIC, Batch
from tests.conftest import REDIS_URL
from tests.stream.helpers import batches_of, make_trades


def _batches(n: int, symbol: str = "BTCUSDT", size: int = 10) -> list[Batch]:
    return batches_of(make_trades(symbol, n * size), size)


async def test_memory_bus_delivers_batches_in_order_to_a_group() -> None:
    bus = MemoryBus()
    consumer = await bus.consumer("workers", "w1")
    batches = _batches(5)
    await bus.publish(batches)
    got = await consumer.fetch(10, 100)
    assert [m.payload.table for m in got] == [b.table for b in batches]
    assert all(m.payload.published_us > 0 for m in got)
    await consumer.ack(got)
    await asyncio.wait_for(bus.drain(), 1)
    assert await consumer.fetch(10, 10) == []


async def test_memory_bus_slow_consumer_blocks_the_producer() -> None:
    """With a queue of two, the producer waits instead of piling batches up."""
    bus = MemoryBus(queue_size=2)
    consumer = await bus.consumer("workers", "w1")
    published = 0

    async def produce() -> None:
        nonlocal published
        for batch in _batches(6):
            await bus.publish([batch])
            published += 1

    producer = asyncio.create_task(produce())
    await asyncio.sleep(0.05)
    assert published == 2
    assert not producer.done()
    got = await consumer.fetch(1, 100)
    await asyncio.sleep(0.01)
    assert published == 3
    while published < 6 or got:
        await consumer.ack(got)
        got = await consumer.fetch(10, 50)
    await asyncio.wait_for(producer, 1)


async def test_memory_bus_tail_follows_from_now_or_after_an_id() -> None:
    """A reader starts now or after an id; one that falls behind the ring skips, never blocks."""
    bus = MemoryBus(ring_size=3)
    first = await bus.publish_event(ALERTS_TOPIC, {"n": 1})
    seen: list[Message] = []

    async def follow(after: str | None) -> None:
        async for message in bus.tail(ALERTS_TOPIC, after):
            seen.append(message)  # noqa: PERF401 - the tail never ends; seen grows live

    live = asyncio.create_task(follow(None))
    await asyncio.sleep(0.01)
    await bus.publish_event(ALERTS_TOPIC, {"n": 2})
    await asyncio.sleep(0.01)
    assert [m.payload["n"] for m in seen] == [2]
    live.cancel()
    seen.clear()
    resumed = asyncio.create_task(follow(first))
    await asyncio.sleep(0.01)
    assert [m.payload["n"] for m in seen] == [2]
    for n in range(3, 7):
        await bus.publish_event(ALERTS_TOPIC, {"n": n})
    await asyncio.sleep(0.01)
    assert [m.payload["n"] for m in seen] == [2, 4, 5, 6]  # 3 fell out of the ring of three
    resumed.cancel()


async def test_memory_bus_statuses_and_unknown_topic() -> None:
    bus = MemoryBus()
    await bus.set_status("binance", {"state": "connected"})
    assert await bus.statuses() == {"binance": {"state": "connected"}}
    with pytest.raises(ConfigError, match="unknown topic 'trades'"):
        await bus.publish_event("trades", {})


def test_open_bus_picks_by_uri() -> None:
    assert isinstance(open_bus(Settings(bus="memory://")), MemoryBus)
    assert isinstance(open_bus(Settings(bus=REDIS_URL)), RedisBus)
    with pytest.raises(ConfigError, match="unknown bus URI 'kafka://x'"):
        open_bus(Settings(bus="kafka://x"))


def test_shards_are_stable_and_spread() -> None:
    assert shard_of("BTCUSDT", 8) == shard_of("BTCUSDT", 8)
    assert len({shard_of(f"S{i}", 8) for i in range(64)}) == 8
    # symbols one character apart spread too (CRC-32 put all of these on one shard)
    assert len({shard_of(f"S{i}USDT", 4) for i in range(8)}) == 4


# -- Redis Streams -----------------------------------------------------------------


@pytest.fixture
async def rbus(redis_prefix: str) -> AsyncIterator[RedisBus]:
    bus = RedisBus(REDIS_URL, prefix=redis_prefix, shards=4, maxlen=1000, lease_ttl_s=0.6)
    yield bus
    await bus.close()


@pytest.mark.redis
async def test_redis_entries_are_consumed_once_and_acked(rbus: RedisBus) -> None:
    batches = _batches(4, "BTCUSDT") + _batches(4, "ETHUSDT")
    ids = await rbus.publish(batches)
    consumer = await rbus.consumer("workers", "w1")
    got: list[Message] = []
    while len(got) < 8:
        got += await consumer.fetch(100, 200)
    assert sorted(m.id for m in got) == sorted(ids)
    by_symbol = [m.payload.table for m in got if m.payload.symbol == "BTCUSDT"]
    assert by_symbol == [b.table for b in batches[:4]]
    shard = shard_of("BTCUSDT", 4)
    pending = await rbus.redis.xpending(rbus.key(RAW_TOPIC, shard), "workers")
    assert pending["pending"] == sum(shard_of(b.symbol, 4) == shard for b in batches)
    await consumer.ack(got)
    pending = await rbus.redis.xpending(rbus.key(RAW_TOPIC, shard_of("BTCUSDT", 4)), "workers")
    assert pending["pending"] == 0
    assert await consumer.fetch(100, 50) == []
    await consumer.close()


@pytest.mark.redis
async def test_redis_dead_consumer_entries_are_reclaimed_by_the_survivor(rbus: RedisBus) -> None:
    dead = await rbus.consumer("workers", "dead")
    assert isinstance(dead, ShardConsumer)
    await rbus.publish(_batches(3, "BTCUSDT"))
    taken: list[Message] = []
    while len(taken) < 3:
        taken += await dead.fetch(100, 100)
    assert dead._heartbeat is not None
    dead._closing.set()  # the process dies: no renewals, no acks, no goodbye
    await asyncio.wait_for(dead._heartbeat, 2)
    survivor = await rbus.consumer("workers", "survivor")
    assert isinstance(survivor, ShardConsumer)
    assert not survivor.owns("BTCUSDT")
    got: list[Message] = []
    for _ in range(30):
        got += await survivor.fetch(100, 100)
        if len(got) >= 3:
            break
    assert sorted(m.id for m in got) == sorted(m.id for m in taken)
    assert survivor.reclaimed == 3
    assert survivor.owns("BTCUSDT")
    await survivor.ack(got)
    key = rbus.key(RAW_TOPIC, shard_of("BTCUSDT", 4))
    assert (await rbus.redis.xpending(key, "workers"))["pending"] == 0
    await survivor.close()


@pytest.mark.redis
async def test_redis_two_live_consumers_split_the_shards(rbus: RedisBus) -> None:
    first = await rbus.consumer("workers", "a")
    second = await rbus.consumer("workers", "b")
    assert isinstance(first, ShardConsumer)
    assert isinstance(second, ShardConsumer)
    for _ in range(20):
        await first.fetch(1, 50)
        await second.fetch(1, 50)
        if len(first.owned) == len(second.owned) == 2:
            break
    assert first.owned.isdisjoint(second.owned)
    assert first.owned | second.owned == {0, 1, 2, 3}
    await second.close()
    assert second.owned == set()
    for _ in range(20):
        await first.fetch(1, 50)
        if len(first.owned) == 4:
            break
    assert first.owned == {0, 1, 2, 3}
    await first.close()


@pytest.mark.redis
async def test_redis_streams_are_trimmed(redis_prefix: str) -> None:
    bus = RedisBus(REDIS_URL, prefix=redis_prefix, shards=1, maxlen=100)
    for _ in range(10):
        await bus.publish(_batches(100, size=1))
    length = await bus.redis.xlen(bus.key(RAW_TOPIC, 0))
    assert 100 <= length < 300
    await bus.close()


@pytest.mark.redis
async def test_redis_tail_resumes_after_an_id(rbus: RedisBus) -> None:
    first = await rbus.publish_event(ALERTS_TOPIC, {"n": 1})
    await rbus.publish_event(ALERTS_TOPIC, {"n": 2})
    seen = []
    async for message in rbus.tail(ALERTS_TOPIC, first):
        seen.append(message.payload["n"])
        if len(seen) == 1:
            await rbus.publish_event(ALERTS_TOPIC, {"n": 3})
        if len(seen) == 2:
            break
    assert seen == [2, 3]
    live = rbus.tail(RAW_TOPIC)
    task = asyncio.ensure_future(live.__anext__())
    await asyncio.sleep(0.05)
    await rbus.publish(_batches(1))
    message = await asyncio.wait_for(task, 3)
    assert message.payload.symbol == "BTCUSDT"
    with contextlib.suppress(RuntimeError):
        await live.aclose()


@pytest.mark.redis
async def test_redis_statuses_and_ping(rbus: RedisBus) -> None:
    await rbus.ping()
    await rbus.set_status("binance", {"state": "reconnecting", "reconnects": 2})
    assert await rbus.statuses() == {"binance": {"state": "reconnecting", "reconnects": 2}}


async def test_unreachable_redis_is_a_bus_error() -> None:
    bus = RedisBus("redis://127.0.0.1:1/0")
    with pytest.raises(BusError, match="not reachable"):
        await bus.ping()
    with pytest.raises(BusError, match="cannot publish"):
        await bus.publish(_batches(1))
    with pytest.raises(BusError, match="cannot publish"):
        await bus.publish_event(ALERTS_TOPIC, {})
    await bus.close()
