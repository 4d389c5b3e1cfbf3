"""The Kubernetes bridge: the shell around :mod:`services.kubebridge.plan`.

Every instance follows the journal (admins' cordons and drains) and every PC's heartbeats
and presence changes, so a standby is warm; the leader runs the passes against the API
server: on every change it hears of, at least every ``resync_s``, every ``retry_s`` while
a PodDisruptionBudget holds an eviction back, and with backoff (``retry_s`` doubling up to
``backoff_max_s``) while the API server cannot be reached. After each pass it publishes a
:class:`~schemas.BridgeStatus` (the metrics writer keeps it). It touches only the nodes
that map to PCs and the pods of ``namespaces``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from bus import names
from bus.codec import Delivery
from bus.connection import PUBLISH_FAILURES, Bus
from bus.consumer import Consumer
from bus.topology import QueueSpec
from schemas import (
    BridgeStatus,
    CordonRequest,
    NodeHeartbeat,
    NodePresence,
    PresenceState,
    utc_now,
)
from schemas.journal import Entry
from services.base import ControlService
from services.kubebridge.kube import Kubernetes, KubeUnavailable, connect
from services.kubebridge.plan import Intent, intent, plan
from services.settings import ServiceEnv

__all__ = ["BridgeSettings", "KubeBridge", "settings_from"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BridgeSettings:
    """Which namespaces' pods the bridge may evict, how PCs map to nodes, and its pace."""

    namespaces: frozenset[str]
    node_label: str | None = None  # map a PC to the node labelled with its name; else by name
    kubeconfig: Path | None = None  # else in-cluster credentials, or $KUBECONFIG
    resync_s: float = 10.0
    retry_s: float = 1.0
    backoff_max_s: float = 30.0
    settle_s: float = 1.5  # a new leader first hears every PC's heartbeat


def settings_from(env: ServiceEnv) -> BridgeSettings:
    """The bridge's settings from the environment's.

    Raises:
        ValueError: no namespace was named (the message says how).
    """
    namespaces = frozenset(name.strip() for name in env.kube_namespaces.split(",") if name.strip())
    if not namespaces:
        raise ValueError("set IDLECLOUD_KUBE_NAMESPACES to the "
                         "namespaces whose pods it may evict, e.g. research,batch")  # fmt: skip
    return BridgeSettings(namespaces, env.kube_node_label or None)


class KubeBridge(ControlService):
    """Mirrors presence, cordons and drains to a Kubernetes cluster; see the module's header."""

    name = "kubebridge"

    def __init__(self, settings: BridgeSettings, *, retry_s: float = 0.5) -> None:
        super().__init__(retry_s=retry_s)
        self.settings = settings
        self.presence: dict[str, tuple[bool, str]] = {}  # PC -> (busy, cause)
        self._admin_named: set[str] = set()  # PCs an admin's request named, ever
        self.status = BridgeStatus(api_reachable=False, nodes_mapped=0, at=utc_now())
        self._wake = asyncio.Event()
        self._events: Consumer[NodeHeartbeat | NodePresence] = Consumer(
            QueueSpec.private(
                names.service_queue(self.name, f"events.{self.journal.instance}"),
                *((names.EVENTS_EXCHANGE, key) for key in names.presence_keys()),
            ),
            (NodeHeartbeat, NodePresence),
            self._on_event,
            prefetch=500,
        )

    async def follow(self, bus: Bus) -> None:
        await self._events.start(bus)

    async def unfollow(self, grace_s: float) -> None:
        await self._events.stop(grace_s)

    async def lead(self, _epoch: int) -> None:
        self.while_leading("passes", self._loop)

    def applied(self, entry: Entry) -> None:
        if isinstance(entry.message, CordonRequest):  # an admin's cordon, drain or uncordon
            self._admin_named.add(entry.message.node)
            self._wake.set()

    async def _on_event(self, event: NodeHeartbeat | NodePresence, _delivery: Delivery) -> None:
        seen = (event.presence.state == PresenceState.BUSY, event.presence.cause.value)
        if self.presence.get(event.node) != seen:
            self.presence[event.node] = seen
            self._wake.set()

    def intents(self) -> dict[str, Intent]:
        """Every PC the bus has described (by its heartbeats or an admin's request), and
        what its node should be."""
        found = {}
        for name in set(self.presence) | self._admin_named:
            busy, cause = self.presence.get(name, (False, ""))
            found[name] = intent(busy, self.state.cordons.get(name), cause)
        return found

    async def _loop(self) -> None:
        await asyncio.sleep(self.settings.settle_s)
        api: Kubernetes | None = None
        backoff_s = self.settings.retry_s
        try:
            while True:
                self._wake.clear()
                try:
                    if api is None:
                        api = Kubernetes(await connect(self.settings.kubeconfig),
                                         self.settings.node_label)  # fmt: skip
                    refused = await self._pass(api)
                except Exception as error:
                    if isinstance(error, KubeUnavailable):
                        log.warning("kubebridge: %s; again in %.1f s", error, backoff_s)
                    else:
                        log.exception("kubebridge: a pass failed; again in %.1f s", backoff_s)
                    self.status = self.status.model_copy(update={
                        "api_reachable": False, "last_error": str(error)[:1024], "at": utc_now(),
                    })  # fmt: skip
                    await self._publish_status()
                    await asyncio.sleep(backoff_s)  # changes wait for the server to answer
                    backoff_s = min(2 * backoff_s, self.settings.backoff_max_s)
                    continue
                backoff_s = self.settings.retry_s
                await self._publish_status()
                with contextlib.suppress(TimeoutError):  # until a change, or the next resync
                    async with asyncio.timeout(
                        self.settings.retry_s if refused else self.settings.resync_s
                    ):
                        await self._wake.wait()
        finally:
            if api is not None:
                await api.close()

    async def _pass(self, api: Kubernetes) -> int:
        """One pass (see :mod:`~services.kubebridge.plan`); how many evictions were refused."""
        namespaces = self.settings.namespaces
        intents = self.intents()
        nodes = await api.nodes()
        pods = {node.name: await api.pods(node.name, namespaces) for node in nodes
                if node.bus_node in intents and intents[node.bus_node].empty}  # fmt: skip
        calls = plan(intents, nodes, pods, namespaces)
        for node, why in calls.cordon:
            log.info("kubebridge: cordoned node %s: %s", node, why)
            await api.cordon(node, why)
        for node in calls.uncordon:
            log.info("kubebridge: uncordoned node %s", node)
            await api.uncordon(node)
        evicted = refused = 0
        for pod in calls.evict:
            if await api.evict(pod):
                evicted += 1
                log.info("kubebridge: evicted %s/%s from %s", pod.namespace, pod.name, pod.node)
            else:
                refused += 1
                log.info("kubebridge: a disruption budget holds %s/%s back; trying again",
                         pod.namespace, pod.name)  # fmt: skip
        cordoned = {n.name for n in nodes if n.unschedulable and n.ours} - set(calls.uncordon)
        cordoned |= {node for node, _why in calls.cordon}
        self.status = BridgeStatus(
            api_reachable=True, nodes_mapped=len(nodes), cordoned=tuple(sorted(cordoned)),
            evicted_total=self.status.evicted_total + evicted,
            refused_total=self.status.refused_total + refused, pending_evictions=refused,
            at=utc_now(),
        )  # fmt: skip
        return refused

    async def _publish_status(self) -> None:
        with contextlib.suppress(*PUBLISH_FAILURES):
            await self.bus.publish(self.status)
