"""A whole control plane for a test or a benchmark: its own vhost, the services, real agents.

Each rig gets a fresh vhost, because the journal outlives its readers: a later rig on the
same vhost would replay an earlier one's deployments.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from bus.connection import Bus
from bus.pages import every_app, every_node
from bus.rpc import RpcClient
from bus.sdk import App
from bus.topology import declare_platform
from idlecloud.dev.services import BrokerInfo, create_vhost, delete_vhost, free_port
from nodeagent.sim import SimNode, Simulation
from schemas import (
    AppsReply,
    DeployRequest,
    Message,
    NodesReply,
    Owner,
    QuotaSet,
    RequestResult,
)
from services.auth.service import AuthService, AuthSettings
from services.auth.tokens import SigningKey
from services.jobs.service import JobSettings, JobsService
from services.placement.reconciler import ReconcilerSettings
from services.placement.registry import Registry
from services.placement.service import Placement, PlacementSettings
from services.quota.service import QuotaManager

#: What a simulated replica runs: a process that sleeps (the process runtime).
SLEEPER = (sys.executable, "-c", "import time; time.sleep(3600)")
#: The units-of-work app whose calls checkpoint (``count``) or do not (``plain``).
CHECKPOINT_APP = "tests.programs.checkpoint_app:app"
FAST = PlacementSettings(
    tick_s=0.3, node_timeout_s=2.0, settle_s=0.8, heard_all_s=0.8,
    reconciler=ReconcilerSettings(preempt_interval_s=2.0),
)  # fmt: skip
AGENT_ARGS = ("--start-idle-s", "0", "--continue-idle-s", "0.5", "--heartbeat-s", "0.3")

ROOT = Path(__file__).resolve().parent.parent


def thesis_pcs(suffix: str) -> tuple[SimNode, ...]:
    """Edge (8 cores), Ninja, Jonathan and Penguin (4 each), named for one test."""
    return tuple(
        SimNode(f"{name}{suffix}", cpu, memory)
        for name, cpu, memory in (("edge", 8000, 16384), ("ninja", 4000, 8192),
                                  ("jonathan", 4000, 8192), ("penguin", 4000, 8192))
    )  # fmt: skip


@dataclass
class Plane:
    """A running control plane with simulated PCs."""

    url: str
    bus: Bus
    simulation: Simulation
    pcs: tuple[SimNode, ...]
    services: list[QuotaManager | Placement | AuthService | JobsService] = field(
        default_factory=list
    )
    _clients: dict[Owner, RpcClient] = field(default_factory=dict)

    async def client(self, owner: Owner) -> RpcClient:
        if owner not in self._clients:
            self._clients[owner] = await RpcClient(self.bus, owner).start()
        return self._clients[owner]

    async def request(self, owner: Owner, message: Message) -> RequestResult:
        client = await self.client(owner)
        return await client.call(message, RequestResult, timeout_s=20)

    async def quota(self, namespace: str, cpu_millicores: int, memory_mib: int = 65_536) -> None:
        result = await self.request(Owner.platform(), QuotaSet(
            request_id=uuid.uuid4().hex[:16], namespace=namespace,
            cpu_millicores=cpu_millicores, memory_mib=memory_mib,
        ))  # fmt: skip
        assert result.accepted, result.reason

    async def deploy(
        self,
        namespace: str,
        app: str,
        replicas: int,
        cpu_millicores: int = 1000,
        command: tuple[str, ...] = SLEEPER,
    ) -> RequestResult:
        return await self.request(Owner.namespace(namespace), DeployRequest(
            request_id=uuid.uuid4().hex[:16], namespace=namespace, app=app, image="local",
            command=command, replicas=replicas, cpu_millicores=cpu_millicores, memory_mib=128,
            env={"PYTHONPATH": str(ROOT)},  # replicas run in a home of their own, not here
        ))  # fmt: skip

    async def apps(self, namespace: str) -> AppsReply:
        client = await self.client(Owner.namespace(namespace))
        return await every_app(lambda page: client.call(page, AppsReply, timeout_s=20), namespace)

    async def nodes(self) -> NodesReply:
        client = await self.client(Owner.platform())
        return await every_node(client, timeout_s=20)

    async def running(self, namespace: str) -> int:
        return sum(view.running for view in (await self.apps(namespace)).apps)

    async def registry_ready(self, registry: Registry, timeout_s: float = 30.0) -> None:
        """Wait until ``registry`` has heard every simulated PC say it is idle."""
        wanted = {pc.name for pc in self.pcs}
        deadline = asyncio.get_running_loop().time() + timeout_s
        while {n for n, node in registry.nodes.items() if node.presence.value == "idle"} < wanted:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not every PC heartbeats: {sorted(registry.nodes)}")
            await asyncio.sleep(0.1)


@asynccontextmanager
async def control_plane(
    work: Path,
    pcs: tuple[SimNode, ...],
    *,
    settings: PlacementSettings = FAST,
    placement: bool = True,
    agent_args: tuple[str, ...] = AGENT_ARGS,
    token_s: int | None = None,
    jobs: JobSettings | None = None,
    broker: BrokerInfo | None = None,
    plane_url: str | None = None,
) -> AsyncIterator[Plane]:
    """A fresh vhost, the quota manager and (unless the test brings its own) placement in
    this process, and real agents; with ``jobs``, the jobs service too. With ``token_s``,
    also the auth service (its key trusted by the broker), and replicas get broker tokens
    that live ``token_s``. On ``broker``, a vhost the caller made (and deletes), if given;
    the control plane itself connects to ``plane_url`` if given (some of a cluster's nodes),
    the agents to the broker's URL."""
    own = broker is None
    broker = broker or create_vhost(f"plane-{uuid.uuid4().hex[:10]}")
    simulation = Simulation(work / "sim")
    try:
        async with Bus(plane_url or broker.url, connection_name="control plane") as bus:
            await declare_platform(bus)
            plane = Plane(broker.url, bus, simulation, pcs)
            plane.services = [QuotaManager(retry_s=0.2)]
            if token_s is not None:
                key = SigningKey.generate()
                private, _public = key.save(work / "keys")
                auth = AuthSettings(private, vhost=broker.vhost, http_port=free_port(),
                                    broker_token_s=token_s)  # fmt: skip
                plane.services.append(AuthService(auth, retry_s=0.2))
                settings = replace(settings, replica_tokens=True)
            if placement:
                plane.services.append(Placement(settings, retry_s=0.2))
            if jobs is not None:
                plane.services.append(JobsService(jobs, retry_s=0.2))
            for service in plane.services:
                await service.start(bus)
            simulation.up(broker.url, pcs, extra_args=agent_args)
            try:
                for service in plane.services:
                    if isinstance(service, Placement):
                        await plane.registry_ready(service.registry)
                yield plane
            finally:
                simulation.down()
                for client in plane._clients.values():
                    await client.stop()
                for service in reversed(plane.services):
                    await service.stop(1.0)
    finally:
        if own:
            await asyncio.to_thread(delete_vhost, broker.vhost)


def _on_replicas(units: int, unit_s: float, ledger: str) -> dict[str, int]:
    raise NotImplementedError  # the replicas run tests.programs.checkpoint_app


def checkpoint_client() -> App:
    """The App a client of :data:`CHECKPOINT_APP` (Alice's app ``count``) calls, whose
    tasks ``count`` and ``plain`` take ``(units, unit_s, ledger)``."""
    app = App("alice", "count")
    for name in ("count", "plain"):
        app.task(name=name)(_on_replicas)
    return app


async def deploy_checkpoint_app(plane: Plane, replicas: int, cpu_millicores: int = 1000) -> App:
    """Deploy :data:`CHECKPOINT_APP` as Alice's app ``count``; :func:`checkpoint_client`."""
    worker = (sys.executable, "-m", "idlecloud", "worker", CHECKPOINT_APP)
    deployed = await plane.deploy("alice", "count", replicas, cpu_millicores, command=worker)
    assert deployed.accepted, deployed.reason
    return checkpoint_client()
