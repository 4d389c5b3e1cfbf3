"""Which of a namespace's jobs are cancelled, as a worker learns it from the platform.

The jobs service writes a cancelled job's id into ``idlecloud.ns.<ns>.cancels``, a
stream the namespace's workers may read and nobody but the platform may write. A worker
reads it from the first entry before it takes a task, and on as it runs; a call whose
``reply_to`` is a cancelled job is acknowledged unstarted. Until the platform has declared
the stream (no job was ever submitted in the namespace) the worker looks again every
:data:`RETRY_S`.
"""

from __future__ import annotations

import asyncio
import logging

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel

from bus.connection import Bus
from bus.streams import StreamTail
from bus.topology import cancels_spec

__all__ = ["RETRY_S", "CancelledJobs"]

log = logging.getLogger(__name__)

#: How often a worker looks again for a namespace's stream of cancellations.
RETRY_S = 5.0


class CancelledJobs:
    """The ids of a namespace's cancelled jobs, kept current from the platform's stream."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._ids: set[str] = set()
        self._tail = StreamTail(cancels_spec(namespace), self._add)
        self._retrying: asyncio.Task[None] | None = None
        self._channel: AbstractRobustChannel | None = None

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    async def start(self, bus: Bus) -> None:
        """Read every cancellation so far (until the stream goes quiet), then follow it."""
        if not await self._try(bus):
            self._retrying = asyncio.get_running_loop().create_task(self._retry(bus))

    async def stop(self) -> None:
        """Stop following."""
        if self._retrying is not None:
            self._retrying.cancel()
        await self._tail.stop()
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def _try(self, bus: Bus) -> bool:
        channel = await bus.channel(prefetch=1000)
        try:
            await self._tail.start(channel)
        except aiormq.exceptions.ChannelNotFoundEntity:  # the broker closed the channel
            return False
        self._channel = channel
        await self._tail.quiet(quiet_s=0.25, timeout_s=5.0)
        return True

    async def _retry(self, bus: Bus) -> None:
        while True:
            await asyncio.sleep(RETRY_S)
            try:
                if await self._try(bus):
                    return
            except Exception:  # the broker is away: look again later
                log.warning("could not read %s's cancelled jobs", self.namespace, exc_info=True)

    def _add(self, _offset: int, incoming: AbstractIncomingMessage) -> None:
        self._ids.add(incoming.body[:64].decode(errors="replace"))
