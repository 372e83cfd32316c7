"""Server-sent events: an async iterator of events becomes a ``text/event-stream``.

Each event is ``(id, event, data)``: ``id`` (may be None) is what a client
sends back as ``Last-Event-ID`` when it reconnects, ``event`` the event type,
``data`` a JSON-serialisable object. A comment line is sent every
``keepalive_s`` seconds of silence so proxies keep the connection open and a
gone client is noticed. The stream ends when the client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi.responses import StreamingResponse

from marketlake.errors import RateLimitError

Event = tuple[str | None, str, Any]
SSE_MEDIA_TYPE = "text/event-stream"
SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            SSE_MEDIA_TYPE: {
                "schema": {
                    "description": "Each event's data is one JSON object; "
                    "the route says which events it sends and what they hold"
                }
            }
        },
        "description": "A stream of server-sent events",
    }
}


def encode_event(event_id: str | None, event: str, data: Any) -> bytes:
    """One SSE frame."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: ".encode() + orjson.dumps(data, default=str) + b"\n\n"


async def frames(
    events: AsyncIterator[Event],
    keepalive_s: float = 15.0,
    retry_ms: int | None = 2000,
    *,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[bytes]:
    """SSE frames of ``events``, with keep-alive comments while nothing happens; the
    stream ends when ``stop`` is set (the server is shutting down)."""
    if retry_ms is not None:
        yield f"retry: {retry_ms}\n\n".encode()
    iterator = aiter(events)
    pending: asyncio.Future[Event] = asyncio.ensure_future(anext(iterator))
    stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        while True:
            waiting: set[asyncio.Future[Any]] = {pending}
            if stopping is not None:
                waiting.add(stopping)
            done, _ = await asyncio.wait(
                waiting, timeout=keepalive_s, return_when=asyncio.FIRST_COMPLETED
            )
            if stopping is not None and stopping.done():
                return
            if not done:
                yield b": keep-alive\n\n"
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            yield encode_event(*event)
            pending = asyncio.ensure_future(anext(iterator))
    finally:
        if stopping is not None:
            stopping.cancel()
        pending.cancel()
        # Bounded: a cancel landing inside a redis-py read can be absorbed by the client.
        await asyncio.wait({pending}, timeout=2.0)
        if pending.done():
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                pending.result()
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                await closer()


class StreamSlot:
    """One open stream of a caller; :meth:`release` (idempotent) gives it back."""

    def __init__(self, slots: StreamSlots, caller: str) -> None:
        self._slots, self.caller = slots, caller
        self.closing = slots.closing
        self.handed = False  # the response owns it now and releases it when it ends
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.release(self.caller)


class StreamSlots:
    """How many SSE streams each caller (API key or address) holds in this process."""

    def __init__(self, per_caller: int) -> None:
        self.per_caller = per_caller
        self.open: dict[str, int] = {}
        self.closing = asyncio.Event()

    def close(self) -> None:
        """End every open stream (at shutdown: the server need not wait for the clients)."""
        self.closing.set()

    def take(self, caller: str) -> StreamSlot:
        """A slot for ``caller``; a :class:`RateLimitError` (429) when it holds them all."""
        held = self.open.get(caller, 0)
        if held >= self.per_caller:
            raise RateLimitError(
                f"{held} live streams are open for this client, the most allowed "
                "(MARKETLAKE_API_SSE_CLIENTS_PER_CLIENT); close one first",
                retry_after=5,
            )
        self.open[caller] = held + 1
        return StreamSlot(self, caller)

    def release(self, caller: str) -> None:
        left = self.open.get(caller, 0) - 1
        if left > 0:
            self.open[caller] = left
        else:
            self.open.pop(caller, None)


async def _holding(slot: StreamSlot, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        slot.release()


def sse_response(
    events: AsyncIterator[Event], slot: StreamSlot | None = None, *, keepalive_s: float = 15.0
) -> StreamingResponse:
    """A streaming response of ``events`` (no caching, no proxy buffering); the stream
    holds ``slot`` until it ends."""
    body = frames(events, keepalive_s, stop=slot.closing if slot is not None else None)
    if slot is not None:
        slot.handed = True
        body = _holding(slot, body)
    return StreamingResponse(
        body,
        media_type=SSE_MEDIA_TYPE,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
