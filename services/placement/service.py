"""The placement service: the thin shell around the registry, the reconciler and the core.

Every instance follows the journal (desired state) and the PCs' events (registry), so a
standby is warm. The leader also runs the reconcile loop: at every change it hears of, and
at least every ``tick_s``, it asks the reconciler for a plan and carries it out: start and
stop commands to the agents, all carrying its epoch, and a ``DeploymentStatus`` event
whenever an app's status changes. It declares each app's queues before its first start,
and on a site with keys gives each replica a broker token (see ``tokens.py``). A new
leader first waits ``settle_s`` so that starts its predecessor sent just before dying show
up in the agents' reports, and an instance that began following the PCs' events less than
``heard_all_s`` ago waits until it has heard every PC's whole heartbeat (which comes every
5 s; a ``NodeAlive`` from a PC it does not know yet says nothing it can use). The leader
also answers the apps and PCs questions of the CLI and the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bus import names
from bus.codec import Delivery
from bus.connection import PUBLISH_FAILURES, Bus
from bus.consumer import Consumer
from bus.rpc import RpcClient, RpcServer
from bus.topology import QueueSpec, declare_app
from schemas import (
    REPLICA_TOKENS_MAX,
    AppsQuery,
    AppsReply,
    DeploymentState,
    DeploymentStatus,
    Message,
    NodeAlive,
    NodeHeartbeat,
    NodePresence,
    NodesQuery,
    NodesReply,
    Owner,
    RenewToken,
    ReplicaRef,
    ReplicaStatus,
    utc_now,
)
from schemas.journal import Entry
from services.base import ControlService
from services.placement.commands import start_messages, stop_messages
from services.placement.logs import LogRelay
from services.placement.reconciler import (
    AppStatus,
    Plan,
    Reconciler,
    ReconcilerSettings,
    Start,
)
from services.placement.registry import Registry
from services.placement.tokens import ReplicaTokens
from services.placement.views import apps_reply, nodes_reply
from services.state import AppKey

__all__ = ["Placement", "PlacementSettings"]

log = logging.getLogger(__name__)

NodeEvent = NodeHeartbeat | NodeAlive | NodePresence | ReplicaStatus
Query = AppsQuery | NodesQuery
_LAGS_KEPT = 100_000


@dataclass(frozen=True)
class PlacementSettings:
    """How often the leader reconciles, and how long it trusts a silent PC."""

    tick_s: float = 0.5
    node_timeout_s: float = 3.0
    settle_s: float = 1.5
    #: An agent sends its whole heartbeat at least every 5 s (signs of life between): an
    #: instance that has followed the PCs' events for less than this may not know every
    #: PC yet, and its first tick as leader waits until it has.
    heard_all_s: float = 6.0
    #: Give every replica a broker token from the auth service (a site with keys).
    replica_tokens: bool = False
    reconciler: ReconcilerSettings = field(default_factory=ReconcilerSettings)


class Placement(ControlService):
    """Keeps every deployment's replicas running on free PCs; see the module's header."""

    name = "placement"

    def __init__(
        self,
        settings: PlacementSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        retry_s: float = 0.5,
    ) -> None:
        super().__init__(retry_s=retry_s)
        self.settings = settings or PlacementSettings()
        self.registry = Registry(self.settings.node_timeout_s)
        self.reconciler = Reconciler(
            self.settings.reconciler, suffixes=lambda: uuid.uuid4().hex[:8]
        )
        self._clock = clock
        self._following_since = clock()
        self._epoch = 0
        self._wake = asyncio.Event()
        self._statuses: dict[AppKey, AppStatus] = {}
        self._declared: set[AppKey] = set()  # apps whose queues this leader declared
        #: Seconds between each of the last heartbeats' sending and their arrival here.
        self.heartbeat_lags_s: deque[float] = deque(maxlen=_LAGS_KEPT)
        #: StartReplica commands the broker confirmed, since this instance started.
        self.starts_confirmed = 0
        self._tokens: ReplicaTokens | None = None
        self._events: Consumer[NodeEvent] = Consumer(
            QueueSpec.private(
                names.service_queue(self.name, f"events.{self.journal.instance}"),
                *((names.EVENTS_EXCHANGE, key) for key in names.node_event_keys()),
            ),
            (NodeHeartbeat, NodeAlive, NodePresence, ReplicaStatus),
            self._on_event,
            prefetch=500,
        )
        self._logs = LogRelay(self.registry, clock=clock)
        self._queries: RpcServer[Query] = RpcServer(
            QueueSpec.quorum(
                names.service_queue(self.name, "queries"),
                *((names.REQUESTS_EXCHANGE, key) for key in names.query_keys()),
            ),
            (AppsQuery, NodesQuery),
            self._answer,
            prefetch=20,
        )

    @property
    def events_queue(self) -> str:
        """The name of this instance's queue of the PCs' events."""
        return self._events.spec.name

    async def follow(self, bus: Bus) -> None:
        self._following_since = self._clock()
        await self._events.start(bus)

    async def unfollow(self, grace_s: float) -> None:
        await self._events.stop(grace_s)

    def leader_queues(self) -> tuple[QueueSpec, ...]:
        return (self._queries.spec, self._logs.spec)

    async def lead(self, epoch: int) -> None:
        self._epoch = epoch
        self._statuses = {}
        self._declared = set()
        if self.settings.replica_tokens:
            self._tokens = ReplicaTokens(await RpcClient(self.bus, Owner.platform()).start())
        self.while_leading("reconciler", self._reconcile_loop)
        await self._queries.start(self.bus)
        await self._logs.start(self.bus)

    async def step_down(self) -> None:
        if self._tokens is not None:
            await self._tokens.stop()
            self._tokens = None
        await self._queries.stop(5.0)
        await self._logs.stop(5.0)

    def applied(self, _entry: Entry) -> None:
        self._wake.set()

    async def _on_event(self, event: NodeEvent, _delivery: Delivery) -> None:
        if isinstance(event, NodeAlive | NodeHeartbeat):
            self.heartbeat_lags_s.append(time.time() - event.sent_at.timestamp())
        match event:
            case NodeAlive():
                self.registry.alive(event, self._clock())
                return  # nothing changed
            case NodeHeartbeat():
                known = event.node in self.registry.nodes
                self.registry.heartbeat(event, self._clock())
                if known:
                    return  # a heartbeat changes little; the next tick takes it in
            case NodePresence():
                self.registry.presence(event)
            case ReplicaStatus():
                self.registry.status(event)
                self.reconciler.observe(event, self._clock())
        self._wake.set()

    async def _reconcile_loop(self) -> None:
        heard_all_at = self._following_since + self.settings.heard_all_s
        await asyncio.sleep(max(self.settings.settle_s, heard_all_at - self._clock()))
        while True:
            self._wake.clear()
            plan = await self._tick()
            try:
                await self._carry_out(plan)
            except PUBLISH_FAILURES as error:
                log.warning("placement: could not send every command (%r); retrying", error)
            except Exception:  # a leader that stops reconciling silently strands every app
                log.exception("placement: a tick failed; the next one tries again")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.tick_s):
                    await self._wake.wait()

    async def _tick(self) -> Plan:
        """One tick of the reconciler, letting the loop take events between its slices."""
        steps = self.reconciler.steps(self.state, self.registry, self._clock())
        while True:
            try:
                next(steps)
            except StopIteration as done:
                plan: Plan = done.value
                return plan
            await asyncio.sleep(0)

    async def _declare_apps(self, plan: Plan) -> None:
        """Declare the queues of apps about to start: a replica's token may not."""
        new = {start.spec.key for start in plan.starts} - self._declared
        if new:
            channel = await self.bus.channel()
            for namespace, app in sorted(new):
                await declare_app(channel, namespace, app)
            await channel.close()
            self._declared |= new

    async def _start_tokens(self, starts: list[Start]) -> dict[str, str]:
        """Each start's broker token by replica id ("" without the auth service); a start
        left without one is not in flight, and the next tick places it again."""
        if self._tokens is None:
            return {start.replica_id: "" for start in starts}
        tokens = await self._tokens.fetch([_ref(start.spec.key, start.replica_id)
                                           for start in starts])  # fmt: skip
        for start in starts:
            if start.replica_id not in tokens:
                self.reconciler.not_sent(start)
        return tokens

    async def _renewals(self) -> list[Message]:
        """RenewToken for every live replica whose token is due."""
        if self._tokens is None:
            return []
        now = self._clock()
        live = [node for node in self.registry.nodes.values() if not self.registry.lost(node, now)]
        where = {rid: (node.name, replica.key) for node in live
                 for rid, replica in node.replicas.items()}  # fmt: skip
        due = self._tokens.due(where)
        tokens = await self._tokens.fetch([_ref(where[rid][1], rid) for rid in due])
        return [RenewToken(node=where[rid][0], epoch=self._epoch, replica_id=rid, token=token)
                for rid, token in tokens.items()]  # fmt: skip

    async def _send_starts(self, starts: list[Start]) -> None:
        """Fetch these starts' tokens, then send them (to each PC together, where it takes
        that), and count them once the broker confirmed them."""
        tokens = await self._start_tokens(starts)
        sent = [(start, tokens[start.replica_id]) for start in starts
                if start.replica_id in tokens]  # fmt: skip
        messages = start_messages(sent, self._epoch, self._takes_batches)
        await asyncio.gather(*(self.bus.publish(message) for message in messages))
        self.starts_confirmed += len(sent)

    async def _carry_out(self, plan: Plan) -> None:
        await self._declare_apps(plan)
        commands: list[Message] = await self._renewals()
        # A chunk's starts are sent while the auth service mints the next chunk's tokens;
        # sorted by PC, so that a PC's starts share a chunk, and a message.
        by_pc = sorted(plan.starts, key=lambda start: start.node)
        chunks = [
            by_pc[i : i + REPLICA_TOKENS_MAX] for i in range(0, len(by_pc), REPLICA_TOKENS_MAX)
        ]
        commands += stop_messages(plan.stops, self._epoch, self._takes_batches)
        for key, status in plan.statuses.items():
            if self._statuses.get(key) != status:
                commands.append(_status_event(status))
        for key in set(self._statuses) - set(plan.statuses):
            gone = AppStatus(key, DeploymentState.DELETED, 0, 0, {}, "deleted")
            commands.append(_status_event(gone))
        await asyncio.gather(
            *(self.bus.publish(command) for command in commands),
            *(self._send_starts(chunk) for chunk in chunks),
        )
        self._statuses = dict(plan.statuses)

    def _takes_batches(self, node: str) -> bool:
        info = self.registry.nodes.get(node)
        return info is not None and info.batched_commands

    async def _answer(self, query: Query, _delivery: Delivery) -> AppsReply | NodesReply:
        now = self._clock()
        if isinstance(query, AppsQuery):
            return apps_reply(query, self.state, self.registry, self._statuses, now)
        return nodes_reply(self.state, self.registry, now, query)


def _ref(key: AppKey, replica_id: str) -> ReplicaRef:
    return ReplicaRef(namespace=key[0], app=key[1], replica_id=replica_id)


def _status_event(status: AppStatus) -> DeploymentStatus:
    return DeploymentStatus(
        namespace=status.key[0],
        app=status.key[1],
        state=status.state,
        desired=status.desired,
        running=status.running,
        replicas_per_node=status.per_node,
        reason=status.reason[:1024],
        at=utc_now(),
    )
