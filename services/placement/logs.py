"""The placement leader's log relay: a PC's batches of output, into their namespace's stream.

A PC sends its replicas' output through its own door (``node.<pc>.logs``); it may write
nothing else anywhere a namespace reads. The leader checks each batch against what it
knows of that PC (its heartbeats: the replicas placed there, whose they are) and appends
it to ``idlecloud.ns.<ns>.logs`` only for a replica placed on that PC with that namespace
and app; anything else is dead-lettered with the reason. A replica stays known for
:data:`GONE_GRACE_S` after it leaves a PC's heartbeats, so its last lines (a crash's
traceback) still land.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bus import names
from bus.codec import Delivery
from bus.consumer import Consumer
from bus.errors import InvalidMessage
from bus.topology import QueueSpec, declare_stream, log_stream_spec
from schemas import LogBatch
from services.placement.registry import Registry

__all__ = ["GONE_GRACE_S", "LogRelay"]

#: How long a replica that left its PC's heartbeats may still ship its last lines.
GONE_GRACE_S = 60.0
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

    def placement(self, replica_id: str) -> _Placement | None:
        """Where the registry has the replica (or had it, within the grace)."""
        now = self._clock()
        for node in self.registry.nodes.values():
            replica = node.replicas.get(replica_id)
            if replica is not None:
                where = (node.name, replica.namespace, replica.app)
                self._seen[replica_id] = (where, now)
                return where
        seen = self._seen.get(replica_id)
        if seen is not None and now - seen[1] <= GONE_GRACE_S:
            return seen[0]
        self._seen.pop(replica_id, None)
        return None

    async def _relay(self, batch: LogBatch, _delivery: Delivery) -> None:
        where = self.placement(batch.replica_id)
        if where != (batch.node, batch.namespace, batch.app):
            placed = "placed nowhere" if where is None else f"{where[1]}/{where[2]} on {where[0]}"
            raise InvalidMessage(
                f"output of replica {batch.replica_id} ({batch.namespace}/{batch.app}) from "
                f"{batch.node}, but that replica is {placed}"
            )
        if batch.namespace not in self._declared:
            await declare_stream(self.bus, log_stream_spec(batch.namespace))
            self._declared.add(batch.namespace)
        route = names.Route(names.DEFAULT_EXCHANGE, names.log_stream(batch.namespace))
        await self.bus.publish(batch, route=route, timeout_s=10.0)
