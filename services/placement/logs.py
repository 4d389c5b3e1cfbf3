"""The placement leader's log relay: a PC's batches of output, into their namespace's stream.

A PC sends its replicas' output through its own door (``node.<pc>.logs``); it may write
nothing else anywhere a namespace reads. The leader checks each batch against what it
knows of that PC (its heartbeats: the replicas placed there, whose they are) and appends
it to ``idlecloud.ns.<ns>.logs`` only for a replica placed on that PC with that namespace
and app; anything else is dead-lettered with the reason. A replica stays known for
:data:`GONE_GRACE_S` after it leaves a PC's heartbeats, so its last lines (a crash's
traceback) still land; one the registry has not heard of yet (its PC's heartbeat is on
its way: a PC heartbeats as soon as a replica starts) is waited for up to
:data:`UNKNOWN_WAIT_S`. Batches are handled many at a time but one replica's in order,
under a lock of that replica's, and a namespace's stream is declared once, under a lock
of that namespace's.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable

from bus import names
from bus.codec import Delivery
from bus.consumer import Consumer
from bus.errors import InvalidMessage
from bus.topology import QueueSpec, declare_stream, log_stream_spec
from schemas import LogBatch
from services.placement.registry import Registry

__all__ = ["GONE_GRACE_S", "UNKNOWN_WAIT_S", "LogRelay"]

#: How long a replica that left its PC's heartbeats may still ship its last lines.
GONE_GRACE_S = 60.0
#: How long a batch of a replica the registry has not heard of waits for it.
UNKNOWN_WAIT_S = 3.0
_POLL_S = 0.05
#: Replicas remembered after they left (pruned of the stale past this many).
_SEEN_KEPT = 10_000
_Placement = tuple[str, str, str]  # (node, namespace, app)


class LogRelay(Consumer[LogBatch]):
    """Checks each batch against the registry and appends it to its namespace's stream."""

    def __init__(self, registry: Registry, *, clock: Callable[[], float] = time.monotonic):
        spec = QueueSpec.quorum(
            names.service_queue("placement", "logs"),
            (names.EVENTS_EXCHANGE, names.log_batch_keys()),
            **{"x-max-length-bytes": 64 * 1024**2, "x-overflow": "drop-head"},
        )
        super().__init__(spec, (LogBatch,), self._relay, prefetch=100)
        self.registry = registry
        self._clock = clock
        self._seen: dict[str, tuple[_Placement, float]] = {}  # replica -> where, when
        self._declared: set[str] = set()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def placement(self, replica_id: str, node: str) -> _Placement | None:
        """Where the registry has the replica (or had it, within the grace): looked up on
        the PC that sent its output first, every PC only when it is not there."""
        now = self._clock()
        sender = self.registry.nodes.get(node)
        holder = sender if sender is not None and replica_id in sender.replicas else next(
            (info for info in self.registry.nodes.values() if replica_id in info.replicas), None
        )  # fmt: skip
        if holder is not None:
            replica = holder.replicas[replica_id]
            where = (holder.name, replica.namespace, replica.app)
            self._remember(replica_id, where, now)
            return where
        seen = self._seen.get(replica_id)
        if seen is not None and now - seen[1] <= GONE_GRACE_S:
            return seen[0]
        self._seen.pop(replica_id, None)
        return None

    def _remember(self, replica_id: str, where: _Placement, now: float) -> None:
        """Keep where a replica was seen; past :data:`_SEEN_KEPT` entries, the stale go."""
        self._seen[replica_id] = (where, now)
        if len(self._seen) > _SEEN_KEPT:
            self._seen = {r: s for r, s in self._seen.items() if now - s[1] <= GONE_GRACE_S}

    async def _relay(self, batch: LogBatch, _delivery: Delivery) -> None:
        async with self._lock(f"replica {batch.replica_id}"):
            where = self.placement(batch.replica_id, batch.node)
            for _ in range(int(UNKNOWN_WAIT_S / _POLL_S)):
                if where is not None:
                    break
                await asyncio.sleep(_POLL_S)
                where = self.placement(batch.replica_id, batch.node)
            await self._append(batch, where)

    async def _append(self, batch: LogBatch, where: _Placement | None) -> None:
        if where != (batch.node, batch.namespace, batch.app):
            placed = "placed nowhere" if where is None else f"{where[1]}/{where[2]} on {where[0]}"
            raise InvalidMessage(
                f"output of replica {batch.replica_id} ({batch.namespace}/{batch.app}) from "
                f"{batch.node}, but that replica is {placed}"
            )
        async with self._lock(f"namespace {batch.namespace}"):
            if batch.namespace not in self._declared:
                await declare_stream(self.bus, log_stream_spec(batch.namespace))
                self._declared.add(batch.namespace)
        route = names.Route(names.DEFAULT_EXCHANGE, names.log_stream(batch.namespace))
        await self.bus.publish(batch, route=route, timeout_s=10.0)
