"""The Kubernetes bridge on a real broker, against a stand-in for the API server.

No Kubernetes API server can run on our machines, so the bridge talks (through
kubernetes-asyncio and a kubeconfig, as it would to a cluster) to ``tests/kube_standin.py``:
a small HTTP server that speaks the endpoints the bridge calls (node list, get and patch,
pod list, eviction create) with answers shaped after the Kubernetes API reference.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bus.connection import Bus
from idlecloud.dev.services import BrokerInfo
from nodeagent.agent import AgentSettings
from nodeagent.policy import PolicySettings
from nodeagent.utmp import write_login, write_logout
from schemas import (
    Amount,
    BridgeStatus,
    CordonRequest,
    NodeHeartbeat,
    Presence,
    PresenceState,
)
from services.kubebridge.plan import CORDON_ANNOTATION
from services.kubebridge.service import BridgeSettings, KubeBridge

from .examples import EXAMPLES
from .helpers import collect_events, open_doors, running_agent, wait_until
from .kube_standin import StandIn

FAST = dict(resync_s=1.0, retry_s=0.2, backoff_max_s=0.8, settle_s=0.3)


@dataclass
class Rig:
    """A bridge leading on its own vhost, the stand-in API server, and its status events."""

    url: str
    bus: Bus
    bridge: KubeBridge
    api: StandIn
    statuses: list[BridgeStatus]

    async def presence(self, pc: str, busy: bool) -> None:
        """What a PC's heartbeat says (as its agent would publish it)."""
        example = EXAMPLES[NodeHeartbeat]
        assert isinstance(example, NodeHeartbeat)
        state = PresenceState.BUSY if busy else PresenceState.IDLE
        presence = Presence(state=state, cause=example.presence.cause, since=example.sent_at)
        await open_doors(self.bus, pc)  # as the auth service does when the PC trades its key
        await self.bus.publish(example.model_copy(update={"node": pc, "presence": presence,
                                                          "replicas": ()}))  # fmt: skip


@pytest.fixture
async def rig(
    scratch: tuple[BrokerInfo, Bus], tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Rig]:
    info, bus = scratch
    api = await StandIn().start()
    options = getattr(request, "param", {})
    settings = BridgeSettings(frozenset({"lab"}), kubeconfig=api.kubeconfig(tmp_path),
                              **{**FAST, **options})  # fmt: skip
    statuses = await collect_events(bus, "idlecloud.kubebridge.status")
    bridge = KubeBridge(settings, retry_s=0.2)
    await bridge.start(bus)
    try:
        yield Rig(info.url, bus, bridge, api, statuses)
    finally:
        await bridge.stop(1.0)
        await api.stop()


async def test_a_login_cordons_the_node_evicts_only_managed_pods_and_a_logout_uncordons(
    rig: Rig, unique: str, tmp_path: Path
) -> None:
    """A real agent: a utmp login on its PC reaches the cluster through the bus."""
    pc = f"pc{unique}"
    api = rig.api
    api.add_node(pc)
    api.add_node("other")
    api.add_pod("lab", "web-1", pc)
    api.add_pod("lab", "web-2", "other")
    api.add_pod("kube-system", "dns", pc)
    api.add_pod("lab", "logger", pc, owner="DaemonSet")
    settings = AgentSettings(
        node=pc, capacity=Amount(cpu_millicores=4000, memory_mib=4096),
        desk_reserve=Amount(cpu_millicores=0, memory_mib=0), utmp_path=tmp_path / "utmp",
        policy=PolicySettings(start_idle_s=0, continue_idle_s=0.5), heartbeat_s=0.2,
    )  # fmt: skip
    agent_bus = Bus(rig.url, connection_name="agent")
    await agent_bus.connect()
    try:
        async with running_agent(agent_bus, settings, tmp_path / "state"):
            await wait_until(lambda: pc in rig.bridge.presence, 10, "the bridge to hear the PC")
            assert not api.unschedulable(pc)
            write_login(settings.utmp_path, "student", "tty7")
            await wait_until(lambda: api.unschedulable(pc), 10, "the node cordoned")
            assert api.annotations(pc)[CORDON_ANNOTATION] == "a person is at the PC (session)"
            await wait_until(lambda: ("lab", "web-1") not in api.pods, 10, "web-1 evicted")
            assert {("lab", "web-2"), ("kube-system", "dns"), ("lab", "logger")} <= set(api.pods)
            assert not api.calls("PATCH", "/nodes/other") and not api.unschedulable("other")
            write_logout(settings.utmp_path, "tty7")
            await wait_until(lambda: not api.unschedulable(pc), 10, "the node uncordoned")
            assert CORDON_ANNOTATION not in api.annotations(pc)
    finally:
        await agent_bus.close()
    assert [s for s in rig.statuses if s.cordoned == (pc,) and s.evicted_total == 1]
    # The status of the uncordoning pass is published after the patch the stand-in saw.
    await wait_until(lambda: rig.statuses[-1].api_reachable and rig.statuses[-1].cordoned == (),
                     5, "a status with nothing cordoned")  # fmt: skip


async def test_a_disruption_budget_refusal_is_retried_until_it_allows_the_eviction(
    rig: Rig, unique: str
) -> None:
    pc = f"pc{unique}"
    rig.api.add_node(pc)
    rig.api.add_pod("lab", "db-0", pc, owner="StatefulSet", budget_refusals=3)
    await rig.presence(pc, busy=True)
    await wait_until(lambda: ("lab", "db-0") not in rig.api.pods, 15, "db-0 evicted at last")
    assert len(rig.api.calls("POST", "/pods/db-0/eviction")) == 4
    await wait_until(lambda: bool(rig.statuses) and rig.statuses[-1].evicted_total == 1, 5,
                     "a status that counts the eviction")  # fmt: skip
    assert rig.statuses[-1].refused_total == 3 and rig.statuses[-1].pending_evictions == 0
    assert any(status.pending_evictions == 1 for status in rig.statuses)


async def test_after_an_api_server_outage_the_bridge_reconciles_what_changed_meanwhile(
    rig: Rig, unique: str
) -> None:
    pc = f"pc{unique}"
    rig.api.add_node(pc)
    rig.api.add_pod("lab", "web-1", pc)
    await rig.presence(pc, busy=False)
    await wait_until(lambda: bool(rig.statuses) and rig.statuses[-1].nodes_mapped == 1, 10,
                     "the bridge to see the node")  # fmt: skip
    await rig.api.stop()
    await rig.presence(pc, busy=True)  # a person sits down while the API server is away
    await wait_until(lambda: not rig.statuses[-1].api_reachable, 10, "the outage reported")
    assert "cannot be reached" in rig.statuses[-1].last_error
    assert not rig.api.unschedulable(pc)
    await rig.api.start()
    await wait_until(lambda: rig.api.unschedulable(pc), 10, "the node cordoned after the outage")
    await wait_until(lambda: not rig.api.pods, 10, "its pod evicted")
    await rig.api.stop()
    await rig.presence(pc, busy=False)  # and leaves while it is away again
    await wait_until(lambda: not rig.statuses[-1].api_reachable, 10, "the second outage")
    await rig.api.start()
    await wait_until(lambda: not rig.api.unschedulable(pc), 10, "uncordoned after it")


@pytest.mark.parametrize("rig", [{"node_label": "idlecloud.org/pc"}], indirect=True)
async def test_nodes_map_by_label_an_admin_drain_empties_one_and_an_operators_cordon_stays(
    rig: Rig, unique: str
) -> None:
    pc, other = f"pc{unique}", f"pc{unique}b"
    rig.api.add_node("node-1.lab.example", labels={"idlecloud.org/pc": pc})
    rig.api.add_node("node-2.lab.example", labels={"idlecloud.org/pc": other}, unschedulable=True)
    rig.api.add_node(pc)  # has the PC's name but not the label: not the PC's node
    rig.api.add_pod("lab", "web-1", "node-1.lab.example")
    await rig.presence(other, busy=False)
    drain = CordonRequest(request_id=uuid.uuid4().hex[:16], node=pc, action="drain")
    await rig.bridge.journal.append_and_read(drain)
    await wait_until(lambda: rig.api.unschedulable("node-1.lab.example"), 10, "node-1 cordoned")
    assert rig.api.annotations("node-1.lab.example")[CORDON_ANNOTATION] == "an admin drained the PC"
    await wait_until(lambda: not rig.api.pods, 10, "node-1's pod evicted")
    await wait_until(lambda: bool(rig.statuses) and rig.statuses[-1].nodes_mapped == 2, 10,
                     "two nodes mapped")  # fmt: skip
    assert rig.api.unschedulable("node-2.lab.example")  # an operator's cordon: left as it was
    assert not rig.api.calls("PATCH", "/nodes/node-2") and not rig.api.calls("PATCH", f"/{pc}")
    uncordon = CordonRequest(request_id=uuid.uuid4().hex[:16], node=pc, action="uncordon")
    await rig.bridge.journal.append_and_read(uncordon)
    await wait_until(lambda: not rig.api.unschedulable("node-1.lab.example"), 10, "uncordoned")
