"""The journal: every admitted change, in one RabbitMQ stream, replayed by every reader.

Writers append with publisher confirms (a retried publish may land twice: readers skip a
request id they have applied). Readers consume the stream from the first entry and apply
each entry in order through a synchronous callback; a :class:`bus.streams.StreamTail`
resumes exactly after the last entry applied after a reconnect: no replay, no skip.
AMQP 0-9-1 has no end-of-stream signal, so :meth:`Journal.catch_up` appends a
marker of its own and waits to read it back: once it has, everything written before is
applied. Entries are at most :data:`MAX_ENTRY_BYTES` (a snapshot of the whole desired
state is the largest; a request is at most the 1 MiB any consumer takes).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Callable

from aio_pika.abc import AbstractIncomingMessage

from bus import names
from bus.codec import decode, delivery_of
from bus.connection import Bus
from bus.errors import InvalidMessage
from bus.streams import StreamTail
from bus.topology import JOURNAL
from schemas import (
    CordonRequest,
    DeleteRequest,
    DeployRequest,
    JobDelete,
    JobEnded,
    JobForgotten,
    JobSeal,
    JobSubmit,
    JournalSnapshot,
    KeyIssued,
    Message,
    QuotaSet,
    ScaleRequest,
    TokenRevoke,
)
from schemas.journal import Entry, JournalMarker, LeaderTookOver

__all__ = ["ENTRIES", "JOURNAL_ROUTE", "MAX_ENTRY_BYTES", "Journal"]

log = logging.getLogger(__name__)

#: What the journal holds: admitted requests, issued and revoked keys, and bookkeeping.
ENTRIES: tuple[type[Message], ...] = (
    DeployRequest,
    ScaleRequest,
    DeleteRequest,
    QuotaSet,
    CordonRequest,
    KeyIssued,
    TokenRevoke,
    JobSubmit,
    JobSeal,
    JobDelete,
    JobEnded,
    JobForgotten,
    LeaderTookOver,
    JournalMarker,
    JournalSnapshot,
)
#: The largest journal entry a reader takes (a snapshot; see services.state).
MAX_ENTRY_BYTES = 64 * 1024 * 1024
#: Appends go through the default exchange straight into the stream.
JOURNAL_ROUTE = names.Route(names.DEFAULT_EXCHANGE, names.JOURNAL_STREAM)
_PREFETCH = 500


class Journal:
    """Appends to the journal and replays it into ``apply``; see the module's header."""

    def __init__(self, apply: Callable[[Entry], None], *, instance: str | None = None) -> None:
        """Call ``apply`` with every entry, in order, once each."""
        self.instance = instance or uuid.uuid4().hex[:16]
        self._apply = apply
        self._accepts = {cls.schema_name: cls for cls in ENTRIES}
        self._tail = StreamTail(JOURNAL, self._on_entry)
        self._waiters: list[tuple[Callable[[Entry], bool], asyncio.Future[Entry]]] = []
        self._seq = itertools.count()
        self._bus: Bus | None = None

    async def start(self, bus: Bus) -> None:
        """Start reading from the first entry (or from where a restart left off)."""
        self._bus = bus
        channel = await bus.channel(prefetch=_PREFETCH)
        await self._tail.start(channel)  # the platform declared the journal

    @property
    def next_offset(self) -> int:
        """The offset of the next entry to read."""
        return self._tail.next_offset

    async def append(self, message: Message, *, timeout_s: float = 30.0) -> None:
        """Append ``message`` under publisher confirms.

        Raises:
            BrokerUnavailable: no confirm within ``timeout_s``.
        """
        if self._bus is None:
            raise RuntimeError("Journal.start() was not called")
        await self._bus.publish(message, route=JOURNAL_ROUTE, timeout_s=timeout_s)

    async def wait_for(self, matches: Callable[[Entry], bool], timeout_s: float = 30.0) -> Entry:
        """The next entry read that ``matches`` (read from now on).

        Raises:
            TimeoutError: none within ``timeout_s``.
        """
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        waiter = (matches, future)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def append_and_read(self, message: Message, timeout_s: float = 30.0) -> Entry:
        """Append ``message`` and return it once read back (and applied)."""
        reading = asyncio.ensure_future(
            self.wait_for(lambda entry: entry.message == message, timeout_s)
        )
        await asyncio.sleep(0)  # the waiter is registered before the append can be read
        try:
            await self.append(message, timeout_s=timeout_s)
        except BaseException:
            reading.cancel()
            raise
        return await reading

    async def catch_up(self, timeout_s: float = 30.0) -> int:
        """Wait until every entry appended before this call is applied; the marker's offset.

        Raises:
            TimeoutError: the marker was not read back within ``timeout_s``.
        """
        marker = JournalMarker(instance=self.instance, seq=next(self._seq))
        return (await self.append_and_read(marker, timeout_s)).offset

    def _on_entry(self, offset: int, incoming: AbstractIncomingMessage) -> None:
        try:
            message = decode(
                delivery_of(incoming),
                self._accepts,
                max_body_bytes=MAX_ENTRY_BYTES,
                check_route=False,
            )
        except InvalidMessage as error:  # written by something that is not the platform
            log.error("journal entry %d skipped: %s", offset, error.reason)
            return
        entry = Entry(offset, message)
        self._apply(entry)
        for waiter in list(self._waiters):
            matches, future = waiter
            if not future.done() and matches(entry):
                future.set_result(entry)
