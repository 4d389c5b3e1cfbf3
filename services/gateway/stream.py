"""Server-sent events from the bus: one private queue per HTTP client, gone with it.

The client gets every event published on ``idlecloud.events`` under the routing keys it
was given, as ``event: <schema name>`` and ``data: <JSON>``; a comment every
``keepalive_s`` keeps proxies from closing a quiet stream and tells the gateway soon when
the client has gone, so its queue does not outlive it.
"""

from __future__ import annotations

import asyncio
import json
import uuid

from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web

from bus import names
from bus.codec import decode_event
from bus.connection import Bus
from bus.errors import InvalidMessage
from bus.topology import QueueSpec

__all__ = ["stream_events"]

#: Events queued for one slow client before the oldest are dropped (it then refetches).
_BACKLOG = 1000


def _frame(message: AbstractIncomingMessage) -> bytes | None:
    """One SSE frame for a delivery, or None for a body that is not a valid event."""
    try:
        event = decode_event(message)
    except InvalidMessage:
        return None  # the platform's own consumers dead-letter it; a viewer just skips it
    data = json.dumps(event.model_dump(mode="json"))
    return f"event: {event.schema_name}\ndata: {data}\n\n".encode()


async def stream_events(
    request: web.Request, bus: Bus, keys: tuple[str, ...], keepalive_s: float = 15.0
) -> web.StreamResponse:
    """Stream the events under ``keys`` to the client of ``request`` until it goes away."""
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })  # fmt: skip
    await response.prepare(request)
    frames: asyncio.Queue[bytes] = asyncio.Queue(maxsize=_BACKLOG)

    async def on_message(message: AbstractIncomingMessage) -> None:
        frame = _frame(message)
        if frame is None:
            return
        if frames.full():
            frames.get_nowait()  # drop the oldest: a live view wants the newest
        frames.put_nowait(frame)

    channel = await bus.channel()
    try:
        spec = QueueSpec.private(
            names.service_queue("gateway", f"sse.{uuid.uuid4().hex[:12]}"),
            *((names.EVENTS_EXCHANGE, key) for key in keys),
        )
        queue = await spec.declare(channel)
        await queue.consume(on_message, no_ack=True)
        await response.write(b": connected\n\n")
        while True:
            try:
                frame = await asyncio.wait_for(frames.get(), keepalive_s)
            except TimeoutError:
                frame = b": keepalive\n\n"
            await response.write(frame)
    except ConnectionResetError:
        pass  # the client went away: the stream ends here
    finally:
        await channel.close()
    return response
