"""Rate limiting per API key or client address.

Embedded mode keeps a token bucket per caller in memory. Server mode
(``MARKETLAKE_BUS=redis://…``) counts requests per caller and minute in Redis,
so every API process shares one budget. A Redis outage lets requests through
(logged once) rather than taking the API down with it.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import structlog

from marketlake.errors import RateLimitError

log = structlog.get_logger("marketlake.api")


def _exceeded(limit: int, retry_after: float) -> RateLimitError:
    return RateLimitError(
        f"rate limit of {limit} requests per minute reached; retry in "
        f"{max(1, math.ceil(retry_after))} s",
        retry_after=retry_after,
    )


class RequestLimiter(Protocol):
    """Counts one request of ``caller``; raises :class:`RateLimitError` past the limit."""

    limit: int

    async def hit(self, caller: str) -> None: ...

    async def close(self) -> None: ...


class MemoryRateLimiter:
    """A token bucket per caller: ``limit`` requests per minute, bursts up to ``limit``."""

    def __init__(self, limit: int, *, clock: object = time.monotonic) -> None:
        self.limit = limit
        self._rate = limit / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._clock = clock

    async def hit(self, caller: str) -> None:
        now: float = self._clock()  # type: ignore[operator]
        tokens, last = self._buckets.get(caller, (float(self.limit), now))
        tokens = min(float(self.limit), tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[caller] = (tokens, now)
            raise _exceeded(self.limit, (1.0 - tokens) / self._rate)
        self._buckets[caller] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:
            self._prune(now)

    def _prune(self, now: float) -> None:
        full = [
            k
            for k, (t, last) in self._buckets.items()
            if t + (now - last) * self._rate >= self.limit
        ]
        for key in full:
            del self._buckets[key]

    async def close(self) -> None:
        self._buckets.clear()


class RedisRateLimiter:
    """A fixed one-minute window per caller, counted with INCR in Redis."""

    def __init__(self, url: str, limit: int, prefix: str) -> None:
        import redis.asyncio as aioredis

        self.limit = limit
        self.prefix = prefix
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        self._warned = False

    async def hit(self, caller: str) -> None:
        import redis

        now = time.time()
        window = int(now // 60)
        key = f"{self.prefix}{caller}:{window}"
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, 120)
                count, _ = await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            if not self._warned:
                log.warning("rate_limit_unavailable", error=str(exc))
                self._warned = True
            return
        self._warned = False
        if int(count) > self.limit:
            raise _exceeded(self.limit, (window + 1) * 60 - now)

    async def close(self) -> None:
        await self._redis.aclose()


def make_rate_limiter(bus: str, limit: int, prefix: str) -> RequestLimiter:
    """Redis-backed when the bus is ``redis://``, in memory otherwise."""
    if bus.startswith(("redis://", "rediss://")):
        return RedisRateLimiter(bus, limit, prefix)
    return MemoryRateLimiter(limit)
