"""Following each replica's output and shipping it to the platform, within its limits.

Every heartbeat tells the shipper which replicas the runtime has; it follows each one,
reading its new output every ``poll_s`` (:meth:`nodeagent.runtime.Runtime.read_output`),
cutting it to the replica's limits (:mod:`nodeagent.loglimit`) and publishing what is left
as ``LogBatch`` messages through the PC's door. A replica that is gone gets one last read.
A batch the broker does not take within the publish's timeout is dropped (and logged):
output never holds up the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from nodeagent.loglimit import Limiter, LogLimits
from nodeagent.runtime import Runtime
from nodeagent.runtime.spec import ENDED, ReplicaInfo
from schemas import MAX_LINE_CHARS, LogBatch, LogLine, utc_now

__all__ = ["BATCH_LINES", "LogShipper"]

log = logging.getLogger(__name__)

#: At most this many lines go in one batch.
BATCH_LINES = 1000


class LogShipper:
    """Follows every replica's output; see the module's header."""

    def __init__(
        self,
        node: str,
        runtime: Runtime,
        publish: Callable[[LogBatch], Awaitable[None]],
        limits: LogLimits | None = None,
        *,
        poll_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.runtime = runtime
        self.limits = limits or LogLimits()
        self.poll_s = poll_s
        self._publish = publish
        self._clock = clock
        self._live: set[str] = set()
        self._followers: dict[str, asyncio.Task[None]] = {}

    def sync(self, replicas: list[ReplicaInfo]) -> None:
        """The runtime's replicas now: follow the new ones; the others end their following."""
        self._live = {r.replica_id for r in replicas if r.state not in ENDED}
        for replica in replicas:
            if replica.replica_id in self._live and replica.replica_id not in self._followers:
                task = asyncio.get_running_loop().create_task(self._follow(replica))
                self._followers[replica.replica_id] = task
                task.add_done_callback(functools.partial(self._forget, replica.replica_id))

    def _forget(self, replica_id: str, _task: asyncio.Task[None]) -> None:
        self._followers.pop(replica_id, None)

    async def close(self) -> None:
        """Stop following (the replicas go on)."""
        tasks = list(self._followers.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, replica: ReplicaInfo) -> None:
        limiter = Limiter(self.limits, self._clock())
        position, partial, seq = 0, b"", 0
        while True:
            last = replica.replica_id not in self._live
            output = await self.runtime.read_output(
                replica.replica_id, position, self.limits.file_bytes
            )
            position = output.position
            limiter.skipped(output.skipped_bytes)
            *complete, partial = (partial + output.data).split(b"\n")
            if len(partial) > 4 * MAX_LINE_CHARS:  # a line without end: ship what it has
                complete.append(partial)
                partial = b""
            lines = self._lines(limiter, complete)
            for start in range(0, len(lines), BATCH_LINES):
                batch = LogBatch(node=self.node, replica_id=replica.replica_id,
                                 namespace=replica.namespace, app=replica.app, seq=seq,
                                 lines=tuple(lines[start : start + BATCH_LINES]))  # fmt: skip
                seq += 1
                await self._send(batch)
            if last:
                return
            await asyncio.sleep(self.poll_s)

    def _lines(self, limiter: Limiter, complete: list[bytes]) -> list[LogLine]:
        now, at = self._clock(), utc_now()
        lines = []
        for raw in complete:
            marker, line = limiter.admit(raw.decode(errors="replace").rstrip("\r"), now)
            if marker is not None:
                lines.append(LogLine(at=at, stream="platform", text=marker))
            if line is not None:
                lines.append(LogLine(at=at, text=line))
        marker = limiter.marker(now)
        if marker is not None:
            lines.append(LogLine(at=at, stream="platform", text=marker))
        return lines

    async def _send(self, batch: LogBatch) -> None:
        try:
            await self._publish(batch)
        except Exception as error:  # the broker is away: output is not worth waiting for
            log.warning("a batch of %s's output was lost: %s", batch.replica_id, error)
