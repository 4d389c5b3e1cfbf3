"""Leadership: one active instance per control-plane service, with an epoch from the journal.

An instance leads while its connection owns the exclusive queue
``idlecloud.<service>.leader``. Any other instance's declaration is refused
(RESOURCE_LOCKED), so it stays a hot standby and tries again every ``retry_s``. The queue
vanishes with its owner's connection (a killed process, a lost network), and a standby
takes it at its next try. An instance competes only once its connection is restored
(``Bus.restored``): a stream drops what is published before it has recovered. The new
leader appends ``LeaderTookOver`` to the journal and reads it back: its offset is the
leader's epoch, carried by every command it sends, so agents drop the commands of a deposed
leader. A leader whose connection drops is deposed at once (``on_deposed``), or gives up
its "took over" entry if it drops before the entry is read back; after the reconnect it
competes again like any standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aiormq
from aio_pika.abc import AbstractChannel

from bus import names
from bus.connection import PUBLISH_FAILURES, TRANSIENT_ERRORS, Bus
from bus.journal import Journal
from bus.service import supervised
from schemas.journal import LeaderTookOver

__all__ = ["Leadership"]

log = logging.getLogger(__name__)

#: The connection is down or being restored: no channel can be opened now.
_RECONNECTING: tuple[type[BaseException], ...] = (RuntimeError, *TRANSIENT_ERRORS)
#: Someone else holds the leader queue, or the connection dropped meanwhile.
_REFUSED: tuple[type[BaseException], ...] = (
    aiormq.exceptions.ChannelLockedResource,
    *TRANSIENT_ERRORS,
)
#: Failing to write or read back the "took over" entry: compete again later.
_GIVE_UP: tuple[type[BaseException], ...] = (TimeoutError, *PUBLISH_FAILURES)


class Leadership:
    """Competes for one service's leadership; see the module's header."""

    def __init__(
        self,
        service: str,
        journal: Journal,
        on_elected: Callable[[int], Awaitable[None]],
        on_deposed: Callable[[], Awaitable[None]],
        *,
        retry_s: float = 0.5,
    ) -> None:
        """Call ``on_elected(epoch)`` on becoming leader and ``on_deposed()`` on losing it."""
        self.service = service
        self.epoch: int | None = None
        self._journal = journal
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()

    @property
    def leading(self) -> bool:
        """True while this instance leads (from the moment ``on_elected`` returned)."""
        return self.epoch is not None

    def start(self, bus: Bus) -> None:
        """Start competing (in the background)."""
        bus.connection.close_callbacks.add(self._on_connection_lost)
        self._task = asyncio.get_running_loop().create_task(
            supervised(f"{self.service} leadership", lambda: self._compete(bus))
        )

    async def stop(self) -> None:
        """Stop competing; a leader gives the queue up by closing its channel."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_connection_lost(self, *_args: object) -> None:
        self._lost.set()

    async def _compete(self, bus: Bus) -> None:
        while True:
            await bus.restored()
            self._lost.clear()
            try:
                channel = await bus.connection.channel()  # robust=False below: never restored
            except _RECONNECTING:  # try again shortly
                await asyncio.sleep(self._retry_s)
                continue
            try:
                await channel.declare_queue(
                    names.leader_queue(self.service), exclusive=True, robust=False
                )
            except _REFUSED:
                await _close(channel)  # someone else leads, or the connection dropped
                await asyncio.sleep(self._retry_s)
                continue
            try:
                await self._lead()
            finally:
                await _close(channel)

    async def _lead(self) -> None:
        took_over = LeaderTookOver(service=self.service, instance=self._journal.instance)
        appending = asyncio.ensure_future(self._journal.append_and_read(took_over))
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait((appending, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            appending.cancel()  # a no-op once done; else the connection dropped meanwhile
        if appending.cancelled():
            return  # compete again after the reconnect
        try:
            entry = appending.result()
        except _GIVE_UP:
            return
        try:
            await self._on_elected(entry.offset)
            self.epoch = entry.offset  # leading, and ready: on_elected has done its work
            log.warning("%s: this instance leads now (epoch %d)", self.service, self.epoch)
            await self._lost.wait()
            log.warning("%s: lost the broker connection; no longer leading", self.service)
        finally:
            self.epoch = None
            await self._on_deposed()


#: How long closing a channel may take before competing goes on without its answer.
_CLOSE_WAIT_S = 1.0


async def _close(channel: AbstractChannel) -> None:
    """Close a channel for good (a robust channel closed by the broker would reopen). Not
    waiting more than :data:`_CLOSE_WAIT_S`: the close of a channel the broker had just
    closed for a refused declaration (the leader queue still owned by a connection on a
    hung node) went unanswered for 10 s, and held a new leader back that long."""
    with contextlib.suppress(*_RECONNECTING, TimeoutError):
        async with asyncio.timeout(_CLOSE_WAIT_S):
            await channel.close()
