"""The metrics writer: PCs' samples and lifecycle events into InfluxDB, losing nothing.

It consumes a durable quorum queue bound to the events it keeps (PCs' metric samples,
presence changes, replica statuses, deployment statuses, quotas and cordons). Each
event's points wait in a batch; a delivery is acknowledged only once its batch is
written, so while InfluxDB is down the broker keeps every event and the writer holds at
most ``prefetch`` of them in memory. A batch is written when ``batch_lines`` are waiting
or ``flush_s`` has passed; a write that did not get through is retried with backoff
(doubling up to ``backoff_max_s``). Bad data is told apart from an unavailable server: when
InfluxDB refuses a line (a timestamp out of its range, a field of another type), the
batch is halved until the events it refuses are found; those are dead-lettered with
InfluxDB's reason and the others written (InfluxDB writes the good lines of a refused
batch, and writing a point again is harmless). Several writers may share the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from bus import names
from bus.codec import Delivery
from bus.connection import Bus
from bus.consumer import Consumer
from bus.errors import InvalidMessage
from bus.service import supervised
from bus.topology import QueueSpec
from schemas import (
    BridgeStatus,
    CordonChanged,
    DeploymentStatus,
    MetricSample,
    NodePresence,
    QuotaChanged,
    ReplicaStatus,
)
from services.metrics.influx import InfluxRefused, InfluxUnavailable
from services.metrics.lineprotocol import points

__all__ = ["LineSink", "MetricsWriter"]

log = logging.getLogger(__name__)

Event = (
    MetricSample
    | NodePresence
    | ReplicaStatus
    | DeploymentStatus
    | QuotaChanged
    | CordonChanged
    | BridgeStatus
)
_EVENTS: tuple[type[Event], ...] = (
    MetricSample,
    NodePresence,
    ReplicaStatus,
    DeploymentStatus,
    QuotaChanged,
    CordonChanged,
    BridgeStatus,
)


class LineSink(Protocol):
    """Where lines go: InfluxDB 1.x or 2.x."""

    async def write(self, lines: list[str]) -> None:
        """Write a batch; raise InfluxUnavailable if it was not taken."""

    async def close(self) -> None:
        """Release the connection."""


class MetricsWriter(Consumer[Event]):
    """Writes events to InfluxDB in batches, acking only what was written; see the header."""

    def __init__(
        self,
        sink: LineSink,
        *,
        batch_lines: int = 5000,
        flush_s: float = 1.0,
        prefetch: int = 2000,
        backoff_max_s: float = 10.0,
    ) -> None:
        spec = QueueSpec.quorum(
            names.service_queue("metrics", "events"),
            *((names.EVENTS_EXCHANGE, key) for key in names.metrics_event_keys()),
        )
        super().__init__(spec, _EVENTS, self._keep, prefetch=prefetch)
        self.sink = sink
        self.batch_lines = batch_lines
        self.flush_s = flush_s
        self.backoff_max_s = backoff_max_s
        self.written = 0
        self._waiting: list[tuple[list[str], asyncio.Future[None]]] = []
        self._full = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    async def start(self, bus: Bus) -> None:
        """Start consuming and flushing."""
        self._flusher = asyncio.get_running_loop().create_task(
            supervised("metrics flusher", self._flush_forever)
        )
        await super().start(bus)

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop consuming; what is not written by then goes back to the queue."""
        await super().stop(grace_s)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.sink.close()

    async def _keep(self, event: Event, _delivery: Delivery) -> None:
        lines = points(event)
        if not lines:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((lines, done))
        if sum(len(batch) for batch, _ in self._waiting) >= self.batch_lines:
            self._full.set()
        try:
            await done  # acknowledged (by the consumer) once written
        except InfluxRefused as error:  # dead-lettered (by the consumer) with the reason
            raise InvalidMessage(f"InfluxDB refused its points: {error}") from None

    async def _flush_forever(self) -> None:
        backoff_s = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff_s or self.flush_s):
                    await self._full.wait()
            self._full.clear()
            batch, self._waiting = self._waiting, []
            if not batch:
                continue
            try:
                await self._write(batch)
            except InfluxUnavailable as error:
                unwritten = [(lines, done) for lines, done in batch if not done.done()]
                self._waiting = unwritten + self._waiting  # kept, in order; retried later
                backoff_s = min(self.backoff_max_s, max(0.5, backoff_s * 2))
                log.warning("metrics: %s; retrying in %.1f s", error, backoff_s)
                continue
            backoff_s = 0.0

    async def _write(self, batch: list[tuple[list[str], asyncio.Future[None]]]) -> None:
        """Write a batch; where InfluxDB refuses a line, halve it until each refused
        event is alone, and fail that event's future with the reason.

        Raises:
            InfluxUnavailable: InfluxDB did not take a part (those futures stay pending).
        """
        try:
            await self.sink.write([line for lines, _ in batch for line in lines])
        except InfluxRefused as error:
            if len(batch) == 1:
                _lines, done = batch[0]
                if not done.done():
                    done.set_exception(error)
                return
            half = len(batch) // 2
            await self._write(batch[:half])
            await self._write(batch[half:])
            return
        self.written += sum(len(lines) for lines, _ in batch)
        for _lines, done in batch:
            if not done.done():
                done.set_result(None)
