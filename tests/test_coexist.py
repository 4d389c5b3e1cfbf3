"""A PC in ``coexist`` mode on the real broker, with real replicas in real cgroups.

A person's login (a real utmp record) shares the PC instead of freezing it: replicas keep
running at ``SCHED_IDLE`` and the lowest CPU weight, within the reduced share. Real
foreground processes (CPU hogs, a memory hog) stand for the person's work; the agent's
fast signals read the kernel's real counters.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from bus.connection import Bus
from idlecloud.dev.services import BrokerInfo
from nodeagent.agent import Agent, AgentSettings
from nodeagent.policy import Phase, PolicySettings
from nodeagent.runtime.cgroup import Cgroup, Mounts
from nodeagent.runtime.container import DOCKER_CGROUP_PARENT
from nodeagent.runtime.docker import DockerRuntime
from nodeagent.runtime.hierarchy import WeightChain, own_groups
from nodeagent.runtime.process import ProcessRuntime, frozen
from nodeagent.sim import remove_containers
from nodeagent.timetable import Timetable
from nodeagent.utmp import write_login
from schemas import (
    Amount,
    NodeHeartbeat,
    NodePresence,
    NodeView,
    PresenceCause,
    PresenceMode,
    PresenceState,
    Refusal,
    ReplicaState,
    ReplicaStatus,
    Resources,
    StartReplica,
)

from .control_plane import AGENT_ARGS, Plane, control_plane, thesis_pcs
from .helpers import Events, collect_events, running_agent, wait_until

T = TypeVar("T")

HALF_CPU = Resources(cpu_millicores=500, memory_mib=128)
SPIN = (sys.executable, "-c", "while True: pass")
MOUNTS = Mounts.read()


def coexisting(node: str, tmp_path: Path, **policy: float) -> AgentSettings:
    """A two-core PC in coexist mode that keeps half of itself for replicas beside a person."""
    return AgentSettings(
        node=node,
        capacity=Amount(cpu_millicores=2000, memory_mib=4096),
        desk_reserve=Amount(),
        utmp_path=tmp_path / "utmp",
        policy=PolicySettings(
            start_idle_s=0, mode=PresenceMode.COEXIST, thaw_after_s=0.5, **policy
        ),
        heartbeat_s=0.2,
        foreign_load=False,
        coexist_cpu_fraction=0.5,
        coexist_memory_fraction=0.5,
    )


def start(agent: Agent, replica_id: str, command: tuple[str, ...] = SPIN) -> StartReplica:
    return StartReplica(
        node=agent.settings.node, epoch=1, replica_id=replica_id, namespace="alice",
        app="stereo", image="local", command=command, reservation=HALF_CPU, token="unused",
    )  # fmt: skip


def pid_of(agent: Agent, replica_id: str) -> int:
    runtime = agent.runtime
    assert isinstance(runtime, ProcessRuntime)
    return runtime._replicas[replica_id].pid


def all_frozen(agent: Agent, replica_ids: list[str]) -> bool:
    return all(frozen(pid_of(agent, replica_id), MOUNTS) for replica_id in replica_ids)


async def live_ids(agent: Agent) -> list[str]:
    return sorted(r.replica_id for r in await agent.runtime.replicas())


@contextmanager
def foreground(*commands: tuple[str, ...]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The person's own programs, killed on the way out."""
    processes = [subprocess.Popen(command) for command in commands]
    try:
        yield processes
    finally:
        for process in processes:
            process.kill()
            process.wait()


@pytest.fixture
async def rig(bus: Bus, unique: str, tmp_path: Path) -> AsyncIterator[tuple[Agent, Events]]:
    node = f"co{unique}"
    events = Events(await collect_events(bus, f"node.{node}.#"))
    async with running_agent(bus, coexisting(node, tmp_path), tmp_path / "state") as agent:
        yield agent, events


async def started(bus: Bus, agent: Agent, events: Events, *replica_ids: str) -> None:
    for replica_id in replica_ids:
        await bus.publish(start(agent, replica_id))
    await wait_until(
        lambda: {s.replica_id for s in events.of(ReplicaStatus)} >= set(replica_ids),
        what=f"{', '.join(replica_ids)} started",
    )


async def test_beside_a_person_replicas_run_at_sched_idle_in_the_share_and_a_hog_freezes_them(
    bus: Bus, rig: tuple[Agent, Events]
) -> None:
    agent, events = rig
    await started(bus, agent, events, "r1", "r2")
    await started(bus, agent, events, "r3")  # the newest: starts end in any order
    for replica_id in ("r1", "r2", "r3"):
        pid = pid_of(agent, replica_id)
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        group = agent.runtime._replicas[replica_id].cgroup  # type: ignore[attr-defined]
        assert (group.dirs["cpu"] / "cpu.shares").read_text().strip() == "2"

    write_login(agent.settings.utmp_path, "student", "tty7")
    await wait_until(lambda: agent.decision.presence is PresenceState.SHARED, what="sharing")
    # the share is 1000m: the two oldest fit, the newest goes, and nothing is frozen
    await wait_until(lambda: "r3" not in agent.runtime._replicas, what="r3 stopped")  # type: ignore[attr-defined]
    assert await live_ids(agent) == ["r1", "r2"]
    assert not any(frozen(pid_of(agent, r), MOUNTS) for r in ("r1", "r2"))
    await wait_until(
        lambda: any(h.presence.state is PresenceState.SHARED for h in events.of(NodeHeartbeat)),
        what="a shared heartbeat",
    )
    beat = [h for h in events.of(NodeHeartbeat) if h.presence.state is PresenceState.SHARED][-1]
    assert (beat.presence_mode, beat.presence.cause) == (
        PresenceMode.COEXIST,
        PresenceCause.SESSION,
    )
    assert beat.allocatable == Resources(cpu_millicores=1000, memory_mib=2048)
    await bus.publish(start(agent, "r4"))
    await wait_until(lambda: any(s.replica_id == "r4" for s in events.of(ReplicaStatus)),
                     what="r4 refused")  # fmt: skip
    refused = next(s for s in events.of(ReplicaStatus) if s.replica_id == "r4")
    assert (refused.refusal, refused.reason) == (
        Refusal.NO_ROOM,
        "needs 500m/128MiB, free 0m/1792MiB",
    )

    # the person's work takes both cores: the replicas freeze at once, and thaw after it
    with foreground(SPIN, SPIN):
        began = time.monotonic()
        await wait_until(lambda: all_frozen(agent, ["r1", "r2"]), timeout_s=5, what="frozen",
                         interval_s=0.005)  # fmt: skip
        froze_s = time.monotonic() - began
        assert not agent.decision.accepting
        await wait_until(
            lambda: any(p.presence.state is PresenceState.BUSY for p in events.of(NodePresence)),
            what="busy told",
        )
    # bench/coexist.py measures the time against its goal of 250 ms (p50 and max over 20
    # trials); this bound, twice that, catches a freeze that waits for a starved replica
    assert froze_s < 0.5, f"frozen {froze_s * 1000:.0f} ms after two CPU hogs began"
    await wait_until(lambda: not all_frozen(agent, ["r1", "r2"]), what="thawed")
    assert agent.decision.presence is PresenceState.SHARED


async def test_coexisting_containers_run_at_the_lowest_class_and_a_hog_freezes_them(
    bus: Bus, unique: str, tmp_path: Path, docker_image: str
) -> None:
    """The same with the Docker runtime: busybox containers spinning on the CPU."""
    node = f"cd{unique}"
    events = Events(await collect_events(bus, f"node.{node}.#"))
    runtime = DockerRuntime(node, usage_interval_s=0)
    try:
        settings = coexisting(node, tmp_path)
        async with running_agent(bus, settings, tmp_path / "state", runtime) as agent:
            for replica_id in ("a", "b"):
                await bus.publish(StartReplica(
                    node=node, epoch=1, replica_id=replica_id, namespace="alice", app="spin",
                    image=docker_image, command=("sh", "-c", "while :; do :; done"),
                    reservation=HALF_CPU, token="unused",
                ))  # fmt: skip
            await wait_until(lambda: len(events.of(ReplicaStatus)) == 2, timeout_s=30,
                             what="two containers")  # fmt: skip
            pids = []
            for replica_id in ("a", "b"):
                container = await runtime.docker.containers.get(runtime.container_name(replica_id))
                pids.append(container["State"]["Pid"])
            assert [os.sched_getscheduler(pid) for pid in pids] == [os.SCHED_IDLE] * 2
            # both under the low-weight parent, though they started at once (one start used
            # to go ahead of the first one's look-up, under /docker at a normal weight)
            groups = [Cgroup.of_pid(pid, MOUNTS).dirs["cpu"] for pid in pids]
            assert [group.parent.parent.name for group in groups] == [DOCKER_CGROUP_PARENT] * 2
            write_login(tmp_path / "utmp", "student", "tty7")
            await wait_until(
                lambda: agent.decision.presence is PresenceState.SHARED, what="sharing"
            )
            with foreground(SPIN, SPIN):
                began = time.monotonic()
                await wait_until(lambda: all(frozen(pid, MOUNTS) for pid in pids), timeout_s=5,
                                 what="frozen", interval_s=0.005)  # fmt: skip
                froze_s = time.monotonic() - began
            # bench/coexist.py times it against 250 ms; docker pause is a round trip to
            # dockerd and runc, which this bound (as the processes') leaves room for
            assert froze_s < 0.5, f"frozen {froze_s * 1000:.0f} ms after two CPU hogs began"
            await wait_until(lambda: not any(frozen(pid, MOUNTS) for pid in pids), what="thawed")
    finally:
        remove_containers(node)


def test_a_freeze_wakes_a_replica_at_a_real_time_class_and_keeps_no_budget(
    tmp_path: Path,
) -> None:
    """A task freezes only when it next runs, and one at the lowest class would wait behind
    the person's work: the freeze runs it at once at a real-time class (with a budget
    where the kernel wants one per group, as here); frozen, it goes back to the lowest
    class and every budget goes back, to its parent and up to the machine's."""
    own = own_groups(f"idlecloud-test/{tmp_path.name}/replicas")
    chain = WeightChain(group for path in own if (group := Cgroup.create(path, MOUNTS)))
    group = Cgroup.create(f"{own[0]}/r", MOUNTS)
    assert group is not None
    group.limit(500, 64)
    sleeper = subprocess.Popen((sys.executable, "-c", "import time; time.sleep(60)"))
    try:
        group.join(sleeper.pid)
        os.sched_setscheduler(sleeper.pid, os.SCHED_IDLE, os.sched_param(0))
        with chain.raised():
            group.freeze()
            woken = os.sched_getscheduler(sleeper.pid)
            deadline = time.monotonic() + 5
            while not group.frozen() and time.monotonic() < deadline:
                time.sleep(0.001)
            assert group.frozen()
            group.lowest_class()
        assert woken == os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
        assert os.sched_getscheduler(sleeper.pid) == os.SCHED_IDLE
        groups = [group, *(Cgroup.named(path, MOUNTS) for path in own)]
        budgets = [g.dirs["cpu"] / "cpu.rt_runtime_us" for g in groups]
        assert [f.read_text().strip() for f in budgets if f.exists()] in ([], ["0"] * 4)
    finally:
        sleeper.kill()
        group.thaw()
        sleeper.wait()
        group.remove()


async def test_a_replica_cannot_leave_the_lowest_class(bus: Bus, rig: tuple[Agent, Events]) -> None:
    agent, events = rig
    escape = (sys.executable, "-c",
              "import os; os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))")  # fmt: skip
    await bus.publish(start(agent, "r1", escape))
    await wait_until(
        lambda: any(s.state is ReplicaState.FAILED for s in events.of(ReplicaStatus)),
        what="its end",
    )
    ended = next(s for s in events.of(ReplicaStatus) if s.state is ReplicaState.FAILED)
    assert "PermissionError" in "\n".join(ended.log_tail)


async def test_short_memory_freezes_replicas_and_evicts_the_newest_before_the_person_loses_any(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    """The floor is set 1 GiB under what is available now, and the person's program takes
    3 GiB: the replicas freeze and the newest goes, while the person's memory stays."""
    node = f"co{unique}"
    events = Events(await collect_events(bus, f"node.{node}.#"))
    available = psutil.virtual_memory().available / 2**20  # MemAvailable, as the agent reads it
    assert available > 4096, "this test needs 4 GiB available"
    settings = coexisting(node, tmp_path, coexist_memory_floor_mib=available - 1024,
                          memory_evict_every_s=60)  # fmt: skip
    async with running_agent(bus, settings, tmp_path / "state") as agent:
        await started(bus, agent, events, "r1", "r2")
        write_login(agent.settings.utmp_path, "student", "tty7")
        await wait_until(lambda: agent.decision.presence is PresenceState.SHARED, what="sharing")
        take = "x = bytearray(3072 * 2**20); import time; time.sleep(60)"
        with foreground((sys.executable, "-c", take)) as (person,):
            await wait_until(lambda: "r2" not in agent.runtime._replicas, what="r2 evicted")  # type: ignore[attr-defined]
            assert all_frozen(agent, ["r1"])
            await wait_until(lambda: psutil.Process(person.pid).memory_info().rss > 3000 * 2**20,
                             what="the person's memory")  # fmt: skip
            assert person.poll() is None
        await wait_until(lambda: not all_frozen(agent, ["r1"]), what="r1 thawed")
        assert await live_ids(agent) == ["r1"]


async def test_class_hours_switch_a_coexisting_pc_to_suspend(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    """The agent's wall clock (injected) moves into class hours while a person shares the PC."""
    node = f"co{unique}"
    events = Events(await collect_events(bus, f"node.{node}.#"))
    settings = replace(coexisting(node, tmp_path), timetable=Timetable.parse(["mon 09:00-10:00"]))
    now = [datetime(2026, 12, 7, 8, 59)]  # a Monday, local time
    async with running_agent(bus, settings, tmp_path / "state", wall_clock=lambda: now[0]) as agent:
        await started(bus, agent, events, "r1")
        write_login(agent.settings.utmp_path, "student", "tty7")
        await wait_until(lambda: agent.decision.presence is PresenceState.SHARED, what="sharing")
        assert not all_frozen(agent, ["r1"])
        now[0] = datetime(2026, 12, 7, 9, 0)
        await wait_until(lambda: all_frozen(agent, ["r1"]), what="frozen for class hours")
        assert (agent.decision.phase, agent.decision.presence) == (
            Phase.OCCUPIED,
            PresenceState.BUSY,
        )


async def test_placement_sends_a_shared_pc_only_what_fits_its_share(
    broker: BrokerInfo, unique: str, tmp_path: Path
) -> None:
    """A simulated PC (4 cores, 8 GiB, nothing kept for a desk) in coexist mode, its fast
    signals off (the machine is shared with the test): a person at it leaves 2,000m and
    2 GiB for replicas, placement runs 2 of 4 one-core replicas there, and all 4 once
    they leave."""
    pc = thesis_pcs(unique)[1]
    quiet = ("--coexist-min-idle-cores", "0", "--coexist-memory-floor-mib", "0")
    args = (*AGENT_ARGS, "--presence-mode", "coexist", *quiet)
    async with control_plane(tmp_path, (pc,), agent_args=args) as plane:
        await plane.quota("alice", 8000)
        plane.simulation.login(pc.name)
        share = Resources(cpu_millicores=2000, memory_mib=2048)
        view = await polled(  # presence is told at once, the share by the next heartbeat
            lambda: first_node(plane),
            lambda v: (v.state, v.allocatable) == ("shared", share),
            "the share",
        )
        assert view.mode is PresenceMode.COEXIST
        assert (await plane.deploy("alice", "spin", 4)).accepted
        await polled(lambda: plane.running("alice"), lambda n: n == 2, "2 running")
        await asyncio.sleep(2)  # and no more come
        assert await plane.running("alice") == 2
        plane.simulation.logout(pc.name)
        await polled(lambda: plane.running("alice"), lambda n: n == 4, "4 running")


async def first_node(plane: Plane) -> NodeView:
    (view,) = (await plane.nodes()).nodes
    return view


async def polled(
    read: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str, timeout_s: float = 30
) -> T:
    """Read until ``done`` says yes; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not done(value := await read()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: {value}")
        await asyncio.sleep(0.2)
    return value
