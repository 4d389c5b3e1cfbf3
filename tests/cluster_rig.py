"""A broker node dies or hangs while the platform works: the scenario the cluster's tests
assert on and ``bench/cluster_failover.py`` times.

On the local three-node cluster (:mod:`idlecloud.dev.cluster`), a control plane (quota
and placement in this process, connected to the two nodes that do not fail; four real
agents with the process runtime, every one of them given all three addresses) takes 50
deploys and scales from two namespaces while an SDK client maps 10,000 tasks through two
real ``bus worker`` processes. The journal stream and the app's task queue are declared
first through a connection to one node alone, so that node leads both (RabbitMQ puts a
new queue's leader on the declaring client's node); once 2,000 results are in, that node
is killed (SIGKILL) or hung (SIGSTOP, for ``hang_s``). The rig measures when each PC is
heard again, when the control plane answers again, and what came back; then the node is
brought back and must rejoin.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bus import names
from bus.connection import Bus
from bus.errors import BrokerUnavailable, RpcTimeout
from bus.rpc import RpcClient
from bus.sdk import TaskClient
from bus.topology import declare_app, declare_platform
from idlecloud.dev.cluster import Cluster, ClusterNode, scratch_cluster_vhost
from schemas import AppsQuery, AppsReply, DeployRequest, Owner, RequestResult, ScaleRequest
from services.placement.service import Placement
from tests.programs.sdk_tasks import make_app

from .control_plane import SLEEPER, Plane, control_plane, thesis_pcs
from .workers import WorkerProcess

__all__ = ["Failover", "failover"]

NAMESPACES = ("north", "south")
#: Each namespace deploys this many apps of one replica and scales all but the last to 2:
#: 25 requests each.
APPS_PER_NAMESPACE = 13


@dataclass
class Failover:
    """What a failover run saw."""

    how: Literal["kill", "hang"]
    victim: str
    tasks: int
    #: index -> value, each index once; ``results_seen`` counts every result delivered.
    results: dict[int, int] = field(default_factory=dict)
    results_seen: int = 0
    requests_sent: int = 0
    requests_accepted: int = 0
    request_retries: int = 0
    #: The node that led the journal and the task queue when the failure came.
    leaders: dict[str, str] = field(default_factory=dict)
    #: The connections (their names) to the victim when the map began.
    on_victim: list[str] = field(default_factory=list)
    #: Replicas wanted per (namespace, app) as the control plane lists them at the end.
    replicas: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Seconds from the failure until every PC was heard again / the control plane answered.
    pcs_heard_s: float | None = None
    serving_s: float | None = None
    map_s: float = 0.0
    rejoin_s: float = 0.0
    members_after: set[str] = field(default_factory=set)
    #: What the run is waiting for now: where it stuck, if it never ends.
    stage: str = "declaring the leaders' queues"

    def progress(self) -> str:
        """Where the run is, for a run that did not end in time."""
        return (f"{self.stage}: {self.results_seen} of {self.tasks} results, "
                f"{self.requests_accepted} of {self.requests_sent} requests accepted "
                f"({self.request_retries} retries), PCs heard again after {self.pcs_heard_s} s, "
                f"serving after {self.serving_s} s")  # fmt: skip

    @property
    def expected_replicas(self) -> dict[tuple[str, str], int]:
        """What the requests asked for: every app at 2 replicas but the last, at 1."""
        last = APPS_PER_NAMESPACE - 1
        return {
            (namespace, f"app{index}"): 1 if index == last else 2
            for namespace in NAMESPACES
            for index in range(APPS_PER_NAMESPACE)
        }


async def _requests(plane: Plane, run: Failover) -> None:
    """The 50 deploys and scales, each retried under its own request id until answered."""
    clients = {ns: await RpcClient(plane.bus, Owner.namespace(ns)).start() for ns in NAMESPACES}
    try:
        for index in range(APPS_PER_NAMESPACE * 2 - 1):
            for namespace in NAMESPACES:
                app = f"app{index // 2}"  # even: its deploy; odd: its scale
                request: DeployRequest | ScaleRequest
                if index % 2 == 0:
                    request = DeployRequest(
                        request_id=uuid.uuid4().hex[:16], namespace=namespace, app=app,
                        image="local", command=SLEEPER, replicas=1, cpu_millicores=100,
                        memory_mib=64,
                    )  # fmt: skip
                else:
                    request = ScaleRequest(
                        request_id=uuid.uuid4().hex[:16], namespace=namespace, app=app, replicas=2
                    )
                run.requests_sent += 1
                while True:
                    try:
                        result = await clients[namespace].call(request, RequestResult, timeout_s=5)
                        break
                    except (RpcTimeout, BrokerUnavailable):  # asked again, under its own id
                        run.request_retries += 1
                assert result.accepted, result.reason
                run.requests_accepted += 1
                await asyncio.sleep(0.1)
    finally:
        for client in clients.values():
            await client.stop()


async def _heard_again(placement: Placement, pcs: list[str], since: float) -> float:
    """Seconds from ``since`` (monotonic) until placement has heard every PC after it."""
    while True:
        heard = [placement.registry.nodes[pc].last_seen for pc in pcs]
        if min(heard) > since:
            return max(heard) - since
        await asyncio.sleep(0.05)


async def _serving(client: RpcClient, since: float) -> float:
    """Seconds from ``since`` until the control plane answers a question again."""
    query = AppsQuery(namespace=NAMESPACES[0], limit=1)
    while True:
        try:
            await client.call(query, AppsReply, timeout_s=0.5)
            return time.monotonic() - since
        except (RpcTimeout, BrokerUnavailable):
            continue


async def _fail(node: ClusterNode, how: Literal["kill", "hang"], hang_s: float) -> None:
    if how == "kill":
        node.signal(signal.SIGKILL)
        return
    node.signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(hang_s)
    finally:
        node.signal(signal.SIGCONT)
    await asyncio.to_thread(node.restart)  # it stays partitioned otherwise (RabbitMQ 3.10)


async def failover(
    work: Path,
    cluster: Cluster,
    how: Literal["kill", "hang"],
    *,
    tasks: int = 10_000,
    fail_after: int = 2_000,
    hang_s: float = 60.0,
    run: Failover | None = None,
) -> Failover:
    """Run the scenario once (see the module's header) and return what it saw, in ``run``
    if given (so a caller that gives up can say where it stuck)."""
    victim = cluster.nodes[0]
    app = make_app(NAMESPACES[0], "sdk")
    run = run or Failover(how, victim.name, tasks)
    with scratch_cluster_vhost(cluster, "failover") as broker:
        async with Bus(victim.url(broker.vhost), connection_name="leaders on one node") as one:
            await declare_platform(one)  # the journal: led by the victim
            channel = await one.channel()
            tasks_queue = await declare_app(channel, app.namespace, app.app)  # the same
        listed = await asyncio.to_thread(cluster.queues, broker.vhost, "leader")
        run.leaders = {name: str(listed[name]["leader"]) for name in
                       (names.JOURNAL_STREAM, tasks_queue.name)}  # fmt: skip
        pcs = thesis_pcs(uuid.uuid4().hex[:4])
        run.stage = "starting the control plane"
        others = ",".join(node.url(broker.vhost) for node in cluster.nodes if node != victim)
        # not on the victim: a control plane whose own node was killed stalled (see the docs)
        async with control_plane(work, pcs, broker=broker, plane_url=others) as plane:
            placement = next(s for s in plane.services if isinstance(s, Placement))
            for namespace in NAMESPACES:
                await plane.quota(namespace, 4000)
            workers = [await WorkerProcess(broker, app).start() for _ in range(2)]
            probe = await plane.client(Owner.namespace(NAMESPACES[0]))
            failing: asyncio.Task[None] | None = None
            try:
                async with Bus(broker.url, connection_name="map client") as client_bus:
                    client = await TaskClient(client_bus, app).start()
                    connected = await asyncio.to_thread(cluster.connections, broker.vhost)
                    run.on_victim = sorted(name for node, name in connected if node == victim.name)
                    requests = asyncio.create_task(_requests(plane, run))
                    started = time.monotonic()
                    run.stage = "mapping"
                    failed_at = 0.0
                    watching: list[asyncio.Task[float]] = []
                    async for index, value in client.map(app.tasks["square"], range(tasks),
                                                         progress=False):  # fmt: skip
                        run.results_seen += 1
                        run.results.setdefault(index, value)
                        if run.results_seen == fail_after:
                            failed_at = time.monotonic()
                            failing = asyncio.create_task(_fail(victim, how, hang_s))
                            names_ = [pc.name for pc in pcs]
                            watching = [
                                asyncio.create_task(_heard_again(placement, names_, failed_at)),
                                asyncio.create_task(_serving(probe, failed_at)),
                            ]
                    run.map_s = time.monotonic() - started
                    run.stage = "waiting for the requests' answers"
                    await requests
                    run.stage = "waiting for every PC and the control plane"
                    run.pcs_heard_s, run.serving_s = [await task for task in watching]
                    await client.stop()
                run.stage = "waiting for the failure to end"
                if failing is not None:
                    await failing
                run.stage = "waiting for the apps to settle"
                await _settled(plane, run)
            finally:
                if failing is not None and not failing.done():
                    failing.cancel()
                back = time.monotonic()
                run.stage = "bringing the node back"
                if victim.pid() is None:  # first: whatever failed, the cluster comes back
                    victim.start()
                for worker in workers:
                    with contextlib.suppress(Exception):
                        await worker.stop(signal.SIGKILL)
                await asyncio.to_thread(cluster.wait_whole)
                run.rejoin_s = time.monotonic() - back
                run.stage = "stopping the control plane"
        run.members_after = await asyncio.to_thread(cluster.members)
    run.stage = "done"
    return run


async def _settled(plane: Plane, run: Failover, timeout_s: float = 60.0) -> None:
    """Wait until the control plane lists what the requests asked for (or ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        run.replicas = {}
        for namespace in NAMESPACES:
            for view in (await plane.apps(namespace)).apps:
                run.replicas[(namespace, view.app)] = view.desired
        if run.replicas == run.expected_replicas or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.5)
