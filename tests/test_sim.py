"""Simulated PCs: real agent processes on this machine, driven like a lab would be."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from bus.connection import Bus
from idlecloud.dev.services import BrokerInfo
from nodeagent.runtime.cgroup import Cgroup, Mounts
from nodeagent.sim import SimNode, Simulation
from schemas import (
    Message,
    NodeHeartbeat,
    NodePresence,
    PresenceState,
    Resources,
    StartReplica,
)

from .helpers import collect_events, wait_until
from .test_cli import bus_cli

MOUNTS = Mounts.read()


@pytest.fixture
async def lab(
    broker: BrokerInfo, bus: Bus, unique: str, tmp_path: Path
) -> AsyncIterator[tuple[Simulation, list[str], dict[str, list[Message]]]]:
    pcs = (SimNode(f"a{unique}", 2000, 2048), SimNode(f"b{unique}", 1000, 1024))
    heard = {pc.name: await collect_events(bus, f"node.{pc.name}.#") for pc in pcs}
    simulation = Simulation(tmp_path / "sim")
    simulation.up(
        broker.url,
        pcs,
        extra_args=("--start-idle-s", "0", "--continue-idle-s", "0.5", "--heartbeat-s", "0.2"),
    )
    yield simulation, [pc.name for pc in pcs], heard
    simulation.down()


async def test_simulated_pcs_heartbeat_see_people_and_die_when_killed(
    bus: Bus, lab: tuple[Simulation, list[str], dict[str, list[Message]]]
) -> None:
    simulation, (a, b), heard = lab
    beats = lambda name: [e for e in heard[name] if isinstance(e, NodeHeartbeat)]  # noqa: E731
    await wait_until(lambda: beats(a) and beats(b), timeout_s=30, what="both PCs' heartbeats")
    assert beats(a)[-1].capacity == Resources(cpu_millicores=2000, memory_mib=2048)

    simulation.login(a)
    await wait_until(
        lambda: any(
            isinstance(e, NodePresence) and e.presence.state is PresenceState.BUSY for e in heard[a]
        ),
        what="a busy PC",
    )
    shown = bus_cli("sim", "status", "--json", "--dir", str(simulation.folder))
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert (report[a]["agent"], report[a]["sessions"], report[b]["sessions"]) == ("running", 1, 0)

    await bus.publish(
        StartReplica(
            node=b,
            epoch=1,
            replica_id="spin-1",
            namespace="lab",
            app="spin",
            image="local",
            command=(sys.executable, "-c", "import time; time.sleep(600)"),
            reservation=Resources(cpu_millicores=500, memory_mib=64),
            token="-",
        )
    )
    records = simulation.state_dir(b) / "replicas"
    await wait_until(lambda: len(list(records.glob("*.json"))) == 1, what="the replica")
    replica_pid = json.loads(next(records.glob("*.json")).read_text())["pid"]
    pc_group = Cgroup.of_pid(replica_pid, MOUNTS).dirs["freezer"].parent  # idlecloud/<pc>
    assert pc_group.name == b
    running = simulation.left_behind([b])  # while it runs, what a check would find
    assert any(str(replica_pid) in found and b in found for found in running), running
    agent_pid = simulation.status()[b]["pid"]
    simulation.kill(b)
    await wait_until(
        lambda: (
            not psutil.pid_exists(replica_pid)
            or psutil.Process(replica_pid).status() == psutil.STATUS_ZOMBIE
        ),
        what="the replica to die with its PC",
    )
    assert simulation.status()[b]["agent"] == "down"
    assert not pc_group.exists()  # nor its replicas' groups: nothing is left behind
    assert simulation.left_behind([b]) == []
    assert not psutil.pid_exists(int(str(agent_pid))) or (
        psutil.Process(int(str(agent_pid))).status() == psutil.STATUS_ZOMBIE
    )
    with pytest.raises(KeyError, match="no simulated PC named 'nope'"):
        simulation.login("nope")


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_the_machines_own_load_is_no_person_at_a_simulated_pc_unless_asked(
    broker: BrokerInfo, bus: Bus, unique: str, tmp_path: Path
) -> None:
    """A CPU-bound process outside the platform (the researcher's own client, say) runs
    for 3 s: simulated PCs stay idle by default, and one started with foreign load counted
    turns busy."""
    quick = ("--start-idle-s", "0", "--heartbeat-s", "0.2", "--load-sample-s", "0.3",
             "--busy-load", "0.3", "--busy-load-for-s", "0.6")  # fmt: skip
    shared, counted = f"s{unique}", f"f{unique}"
    heard = {name: await collect_events(bus, f"node.{name}.presence") for name in (shared, counted)}
    simulation = Simulation(tmp_path / "sim")
    simulation.up(broker.url, (SimNode(shared, 1000, 1024),), extra_args=quick)
    simulation.up(broker.url, (SimNode(counted, 1000, 1024),), foreign_load=True, extra_args=quick)
    try:
        await wait_until(lambda: heard[shared] and heard[counted], 30, "both PCs' presence")
        spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
        hog = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            spin,
            env={"PATH": "/usr/bin:/bin"},  # not the platform's
        )
        await hog.wait()

        def busy(name: str) -> bool:
            return any(p.presence.state is PresenceState.BUSY for p in heard[name])

        await wait_until(lambda: busy(counted), 10, "the counting PC to turn busy")
        assert not busy(shared)
    finally:
        simulation.down()
