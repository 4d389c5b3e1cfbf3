"""Reading a RabbitMQ stream from an offset on, each message once, across reconnects.

A stream consumer names the offset to start from (``x-stream-offset``) and every delivery
carries its own. The reader remembers the next offset in the very ``arguments`` mapping a
robust channel re-consumes with after a reconnect, so it resumes after the last message it
handled: no replay, no skip. AMQP 0-9-1 has no end-of-stream signal; a reader that must
know it has read everything written so far waits for a message it knows is the last
(the journal's marker, a job's last result) or for a quiet spell (:meth:`StreamTail.quiet`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from bus.topology import QueueSpec

__all__ = ["StreamTail"]

log = logging.getLogger(__name__)


class StreamTail:
    """Hands each message of one stream to ``handle(offset, message)`` once, in order."""

    def __init__(
        self,
        spec: QueueSpec,
        handle: Callable[[int, AbstractIncomingMessage], None],
        *,
        start: int | str | datetime = "first",
    ) -> None:
        """Read ``spec``'s stream (declared passively) from ``start`` on: an offset,
        ``first``, ``next``, or a time (from the first chunk written then)."""
        self.spec = spec
        self.next_offset = start if isinstance(start, int) else 0
        self._handle = handle
        self._arguments: dict[str, Any] = {"x-stream-offset": start}
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._delivered = asyncio.Event()

    async def start(self, channel: AbstractChannel) -> StreamTail:
        """Consume on ``channel`` (which needs a prefetch: the broker demands one).

        Raises:
            aiormq.exceptions.ChannelNotFoundEntity: the stream does not exist (the channel
                is closed by the broker).
        """
        self._queue = await self.spec.declare(channel, passive=True)
        self._tag = await self._queue.consume(self._on_message, arguments=self._arguments)
        return self

    async def stop(self) -> None:
        """Stop consuming (the channel stays open)."""
        queue, tag, self._queue, self._tag = self._queue, self._tag, None, None
        if queue is not None and tag is not None and not queue.channel.is_closed:
            await queue.cancel(tag)

    async def quiet(self, quiet_s: float = 0.1, timeout_s: float = 5.0) -> None:
        """Return once nothing was delivered for ``quiet_s`` (the backlog is read: a
        stream hands it over in quick bursts), or after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._delivered.clear()
            try:
                await asyncio.wait_for(self._delivered.wait(), quiet_s)
            except TimeoutError:
                return

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        self._delivered.set()
        offset = (incoming.headers or {}).get("x-stream-offset")
        if isinstance(offset, int):
            if offset >= self.next_offset:
                try:
                    self._handle(offset, incoming)
                except Exception:  # one bad message must not stop the reading
                    log.exception("%s: message at offset %d not handled", self.spec.name, offset)
            self.next_offset = max(self.next_offset, offset + 1)
            self._arguments["x-stream-offset"] = self.next_offset  # where a re-consume resumes
        await incoming.ack()
