"""The quota manager as a service: while it leads, it admits requests into the journal.

Only the leader consumes ``idlecloud.quota.requests`` (one request at a time, so each is
judged against every change before it). An admitted request is appended to the journal
and read back before it is answered: the next request sees it. A request id already in
the journal with the same content (a redelivery) is answered as admitted again and not
appended twice; with other content it is refused, saying so. The
requester gets a ``RequestResult`` by RPC, and the same result is published as an event
either way; an admitted quota or cordon is also announced (``QuotaChanged``,
``CordonChanged``) for the metrics writer and dashboards. A namespace with a quota gets
its own view of the events (``ns.<ns>.events``), the only place its users may listen.

The leader also writes a snapshot of the whole desired state into the journal every
``snapshot_every`` entries (:data:`services.state.SNAPSHOT_EVERY`), so the journal's
size bound only ever drops entries a snapshot holds (see ``bus.topology.JOURNAL``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from bus import names
from bus.codec import Delivery
from bus.rpc import RpcServer
from bus.topology import QueueSpec, declare_namespace
from schemas import (
    CordonChanged,
    CordonRequest,
    DeleteRequest,
    DeployRequest,
    QuotaChanged,
    QuotaSet,
    RequestResult,
    Resources,
    ScaleRequest,
    utc_now,
)
from schemas.base import NamespaceMessage
from schemas.journal import Entry
from services.base import ControlService
from services.quota.admission import admit, recall
from services.state import SNAPSHOT_EVERY

__all__ = ["QuotaManager"]

log = logging.getLogger(__name__)

Request = DeployRequest | ScaleRequest | DeleteRequest | QuotaSet | CordonRequest
_REQUESTS: tuple[type[Request], ...] = (
    DeployRequest,
    ScaleRequest,
    DeleteRequest,
    QuotaSet,
    CordonRequest,
)


class QuotaManager(ControlService):
    """Admits or refuses deploy, scale, delete, quota and cordon requests; see the header."""

    name = "quota"

    def __init__(self, *, retry_s: float = 0.5, snapshot_every: int = SNAPSHOT_EVERY) -> None:
        super().__init__(retry_s=retry_s)
        self.snapshot_every = snapshot_every
        self._snapshotting = False
        spec = QueueSpec.quorum(
            names.service_queue(self.name, "requests"),
            *((names.REQUESTS_EXCHANGE, key) for key in names.request_keys()),
        )
        self._server: RpcServer[Request] = RpcServer(spec, _REQUESTS, self._handle, prefetch=1)
        self._tasks: set[asyncio.Task[None]] = set()
        #: Namespaces whose door this leader has declared (each once a tenure).
        self._opened: set[str] = set()

    def leader_queues(self) -> tuple[QueueSpec, ...]:
        return (self._server.spec,)

    async def lead(self, epoch: int) -> None:
        channel = await self.bus.channel()
        self._opened = set()
        for namespace in sorted(self.state.quotas):  # idempotent: after a takeover too
            await declare_namespace(channel, namespace)
            self._opened.add(namespace)
        await channel.close()
        await self._server.start(self.bus)

    async def step_down(self) -> None:
        await self._server.stop(5.0)

    def applied(self, entry: Entry) -> None:
        """The leader announces each quota and cordon the journal records, whoever wrote it
        (the auth service sets a quota when it issues a user's key with limits), and writes
        a snapshot once ``snapshot_every`` entries came since the last one."""
        if not self.leadership.leading:
            return
        if isinstance(entry.message, QuotaSet | CordonRequest):
            self._background(self._announce(entry.message))
        due = entry.offset - self.state.snapshot_offset >= self.snapshot_every
        if due and not self._snapshotting:
            self._snapshotting = True
            self._background(self._write_snapshot())

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_snapshot(self) -> None:
        try:
            entry = await self.journal.append_and_read(self.state.snapshot())
            log.info("snapshot of the desired state written at offset %d", entry.offset)
        except Exception:  # the next entry tries again
            log.exception("could not write a snapshot of the desired state")
        finally:
            self._snapshotting = False

    async def _announce(self, request: QuotaSet | CordonRequest) -> None:
        """Quotas and cordons, once journaled, are also events (for metrics, dashboards)."""
        match request:
            case QuotaSet():  # also one another service wrote: its namespace opens too
                await self._open(request.namespace)
                quota = Resources(cpu_millicores=request.cpu_millicores,
                                  memory_mib=request.memory_mib)  # fmt: skip
                await self.bus.publish(QuotaChanged(namespace=request.namespace, quota=quota,
                                                    at=utc_now()))  # fmt: skip
            case CordonRequest():
                change = CordonChanged(node=request.node, action=request.action,
                                       reason=request.reason, at=utc_now())  # fmt: skip
                await self.bus.publish(change)

    async def _open(self, namespace: str) -> None:
        """Declare the namespace's door and views, unless this leader did already (a quota
        it admitted is opened as it is answered, then announced)."""
        if namespace in self._opened:
            return
        channel = await self.bus.channel()
        try:
            await declare_namespace(channel, namespace)
        finally:
            await channel.close()
        self._opened.add(namespace)

    async def _handle(self, request: Request, _delivery: Delivery) -> RequestResult:
        verdict = recall(self.state, request)
        if verdict is None:  # a new request
            verdict = admit(self.state, request)
            if verdict.accepted:
                await self.journal.append_and_read(request)
        accepted, reason = verdict.accepted, verdict.reason
        if accepted and isinstance(request, QuotaSet):  # its door opens before anyone is told
            await self._open(request.namespace)
        namespace = request.namespace if isinstance(request, NamespaceMessage) else None
        result = RequestResult(
            request_id=request.request_id, namespace=namespace, accepted=accepted, reason=reason
        )
        log.info("%s %s: %s", request.schema_name, request.request_id, reason or "admitted")
        await self.bus.publish(result)
        return result
