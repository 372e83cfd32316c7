"""The shared HTTP layer: token-bucket pacing and Retry-After parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx

from marketlake.providers.http import RateLimiter, retry_after_s
from tests.providers.vendor import Sleeps


async def test_the_rate_limiter_spaces_requests_after_the_burst() -> None:
    now = [0.0]
    sleeps = Sleeps()
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0], sleep=sleeps)
    for _ in range(4):
        await limiter.acquire()
    assert sleeps.waits == [1.0, 2.0]
    now[0] = 10.0
    await limiter.acquire()
    assert sleeps.waits == [1.0, 2.0]


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    assert retry_after_s(httpx.Response(429, headers={"Retry-After": "12"})) == 12.0
    later = datetime.now(UTC) + timedelta(seconds=30)
    seconds = retry_after_s(httpx.Response(429, headers={"Retry-After": format_datetime(later)}))
    assert seconds is not None
    assert 25 <= seconds <= 30
    assert retry_after_s(httpx.Response(429, headers={"Retry-After": "soon"})) is None
    assert retry_after_s(httpx.Response(429)) is None
