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
    events: AsyncIterator[Event], keepalive_s: float = 15.0, retry_ms: int | None = 2000
) -> AsyncIterator[bytes]:
    """SSE frames of ``events``, with keep-alive comments while nothing happens."""
    if retry_ms is not None:
        yield f"retry: {retry_ms}\n\n".encode()
    iterator = aiter(events)
    pending: asyncio.Future[Event] = asyncio.ensure_future(anext(iterator))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
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
        pending.cancel()
        # Bounded: a cancel landing inside a redis-py read can be absorbed by the client.
        await asyncio.wait({pending}, timeout=2.0)
        if pending.done():
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                pending.result()
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                await closer()


def sse_response(events: AsyncIterator[Event], *, keepalive_s: float = 15.0) -> StreamingResponse:
    """A streaming response of ``events`` (no caching, no proxy buffering)."""
    return StreamingResponse(
        frames(events, keepalive_s),
        media_type=SSE_MEDIA_TYPE,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
