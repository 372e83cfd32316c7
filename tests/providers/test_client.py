"""The client a provider makes itself (aiohttp's transport under httpx) on real sockets:
a refused connection, a server that never answers and a body cut short each get the
right retry and message."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa
import pytest

from marketlake.config import Settings
from marketlake.errors import ProviderError
from marketlake.providers.binance.rest import BinanceProvider
from tests.providers.vendor import Sleeps, payload

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
KLINES = payload("binance", "klines_BTCUSDT_1m_page1.json")
START = datetime(2024, 3, 4, tzinfo=UTC)  # the page's first kline
END = datetime(2024, 3, 4, 0, 5, tzinfo=UTC)


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """A TCP server on a free local port running ``handler`` per connection."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def provider_at(url: str, timeout_s: float = 5.0) -> tuple[BinanceProvider, Sleeps]:
    provider = BinanceProvider(
        Settings(binance_url=url, rate_limit=False, http_timeout_s=timeout_s)
    )
    sleeps = Sleeps()
    provider.sleep = sleeps
    return provider, sleeps


async def fetch(provider: BinanceProvider) -> pa.Table:
    try:
        return pa.concat_tables([t async for t in provider.fetch_bars("BTCUSDT", "1m", START, END)])
    finally:
        await provider.aclose()


async def read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


def answer(body: bytes, length: int | None = None) -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    return head.encode() + body


async def test_a_refused_connection_is_retried_and_reported_as_one() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider, sleeps = provider_at(f"http://127.0.0.1:{port}")
    provider.retry = type(provider.retry)(attempts=3)  # below the breaker's threshold
    with pytest.raises(
        ProviderError,
        match=r"failed 3 times for BTCUSDT: connection failed "
        r"\(ClientConnectorError",
    ):
        await fetch(provider)
    assert len(sleeps.waits) == 2


async def test_a_server_that_never_answers_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client gives up and closes the connection
        writer.close()
        await writer.wait_closed()

    async with serving(silent) as url:
        provider, sleeps = provider_at(url, timeout_s=0.2)
        provider.retry = type(provider.retry)(attempts=2)
        with pytest.raises(
            ProviderError,
            match=r"failed 2 times for BTCUSDT: timed out after "
            r"0.2 s",
        ):
            await fetch(provider)
    assert len(sleeps.waits) == 1


async def test_a_body_cut_short_is_retried_and_the_next_answer_is_read_whole() -> None:
    answers = [answer(KLINES[:40], length=len(KLINES)), answer(KLINES)]

    async def cutting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answers.pop(0))
        await writer.drain()
        writer.close()  # the first answer ends 40 bytes into its body
        await writer.wait_closed()

    async with serving(cutting) as url:
        provider, sleeps = provider_at(url)
        table = await fetch(provider)
    assert answers == []
    assert len(sleeps.waits) == 1
    expected = orjson.loads(KLINES)
    assert table.column("ts").to_pylist() == [
        START + timedelta(minutes=i) for i in range(len(expected))
    ]
    assert table.column("close").to_pylist() == [float(k[4]) for k in expected]
    assert table.column("trades").to_pylist() == [k[8] for k in expected]
