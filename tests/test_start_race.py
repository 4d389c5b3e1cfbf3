"""A start that overlaps a login never leaves a replica running beside the person.

The runtime's start is held open by a hook (:class:`HeldStart`) while a real utmp login is
written, so the race happens on every trial: the login lands before the held start goes
on, a few milliseconds into it, or while it is under way. Real processes (process
runtime) and real containers (dockerd) on the real broker; the agent runs in the test's
process so the hook can hold its runtime. 250 ms after each login no replica process may
be running, and when the agent says "busy" every replica must be frozen already.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bus.connection import Bus
from nodeagent.agent import AgentSettings
from nodeagent.policy import PolicySettings
from nodeagent.runtime import Runtime
from nodeagent.runtime.cgroup import Mounts
from nodeagent.runtime.docker import DockerRuntime
from nodeagent.runtime.process import ProcessRuntime, frozen
from nodeagent.runtime.spec import ReplicaSpec
from nodeagent.utmp import write_login, write_logout
from schemas import (
    Amount,
    NodePresence,
    PresenceState,
    ReplicaStatus,
    Resources,
    StartReplica,
    StopReplica,
)

from .helpers import Events, collect_events, process_runtime, running_agent, wait_until

TRIALS = 50
#: Seconds from the login to the hook's release; negative: released first, login after.
OFFSETS_S = (0.0, 0.001, 0.01, 0.05, -0.02, -0.1)
LIMIT_S = 0.25
SPIN = ("sh", "-c", "while :; do :; done")
MOUNTS = Mounts.read()


class HeldStart:
    """A runtime whose start waits at its door until the test lets it through."""

    def __init__(self, inner: Runtime) -> None:
        self.inner = inner
        self.name = inner.name
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def start(self, spec: ReplicaSpec, *, may_run: Callable[[], bool]) -> None:
        self.entered.set()
        await self.release.wait()
        await self.inner.start(spec, may_run=may_run)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def unfrozen(runtime: Runtime) -> list[str]:
    """The replicas with a process that can run now."""
    if isinstance(runtime, ProcessRuntime):
        found = []
        for replica_id, replica in runtime._replicas.items():
            pids = replica.cgroup.pids() if replica.cgroup is not None else [replica.pid]
            if any(not _frozen(pid) for pid in pids):
                found.append(replica_id)
        return found
    assert isinstance(runtime, DockerRuntime)
    listed = await runtime.docker.containers.list(
        filters={"label": [f"org.idlecloud.node={runtime.node}"], "status": ["running"]}
    )
    return [container["Labels"]["org.idlecloud.replica"] for container in listed]


def _frozen(pid: int) -> bool:
    try:
        return frozen(pid, MOUNTS)
    except Exception:  # gone: it cannot run either
        return True


async def race(bus: Bus, runtime: Runtime, node: str, tmp_path: Path, image: str) -> Counter[str]:
    """Run the trials; return how each raced start ended."""
    events = Events(await collect_events(bus, f"node.{node}.#"))
    settings = AgentSettings(
        node=node,
        capacity=Amount(cpu_millicores=4000, memory_mib=4096),
        desk_reserve=Amount(),
        utmp_path=tmp_path / "utmp",
        policy=PolicySettings(start_idle_s=0, continue_idle_s=0.05, max_suspend_s=600),
        heartbeat_s=0.5,
    )
    held = HeldStart(runtime)
    outcomes: Counter[str] = Counter()

    def command(replica_id: str) -> StartReplica:
        return StartReplica(
            node=node, epoch=1, replica_id=replica_id, namespace="alice", app="race",
            image=image, command=SPIN, reservation=Resources(cpu_millicores=100, memory_mib=64),
            token="t",
        )  # fmt: skip

    def presences(state: PresenceState) -> int:
        return sum(1 for p in events.of(NodePresence) if p.presence.state is state)

    async with running_agent(bus, settings, tmp_path / "state", held) as agent:  # type: ignore[arg-type]
        held.release.set()
        await bus.publish(command("bystander"))  # one that runs already when the person comes
        await wait_until(lambda: len(events.of(ReplicaStatus)) == 1, what="the bystander")
        for trial in range(TRIALS):
            replica_id, offset_s = f"raced-{trial}", OFFSETS_S[trial % len(OFFSETS_S)]
            held.entered.clear()
            held.release.clear()
            busy_before = presences(PresenceState.BUSY)
            statuses_before = len(events.of(ReplicaStatus))
            await bus.publish(command(replica_id))
            await asyncio.wait_for(held.entered.wait(), 10)
            if offset_s < 0:
                held.release.set()
                await asyncio.sleep(-offset_s)
            write_login(settings.utmp_path, "student", "tty7")
            login_at = time.monotonic()
            if offset_s >= 0:
                await asyncio.sleep(offset_s)
                held.release.set()
            await wait_until(
                lambda b=busy_before: presences(PresenceState.BUSY) > b, what="busy", interval_s=0
            )
            told = await unfrozen(held.inner)
            assert told == [], f"trial {trial}: {told} ran when the platform was told busy"
            await asyncio.sleep(max(0.0, login_at + LIMIT_S - time.monotonic()))
            late = await unfrozen(held.inner)
            assert late == [], f"trial {trial} ({offset_s} s): {late} ran 250 ms after the login"
            await wait_until(
                lambda s=statuses_before: len(events.of(ReplicaStatus)) > s, what="its status"
            )
            status = events.of(ReplicaStatus)[-1]
            assert status.replica_id == replica_id
            outcomes[f"{status.state.value}: {status.reason.split(' (')[0]}"] += 1
            idle_before = presences(PresenceState.IDLE)
            write_logout(settings.utmp_path, "tty7")
            await wait_until(lambda i=idle_before: presences(PresenceState.IDLE) > i, what="idle")
            await bus.publish(StopReplica(node=node, epoch=1, replica_id=replica_id, grace_s=0))

            async def gone(replica_id: str = replica_id) -> bool:
                return all(r.replica_id != replica_id for r in await agent.runtime.replicas())

            deadline = time.monotonic() + 20
            while not await gone():
                assert time.monotonic() < deadline, f"{replica_id} was not stopped"
                await asyncio.sleep(0.02)
    print(f"{runtime.name}: {TRIALS} raced starts: {dict(outcomes)}")
    assert sum(outcomes.values()) == TRIALS
    # failed: it never began; paused: it began as the person came; running: it ran before
    # the login was seen, and was frozen with the rest
    assert set(outcomes) <= {"failed: this PC is occupied", "paused: this PC is occupied",
                             "running: "}  # fmt: skip
    return outcomes


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_start_racing_a_login_ends_frozen_with_the_process_runtime(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    node = f"race{unique}"
    outcomes = await race(bus, process_runtime(tmp_path / "state", node), node, tmp_path, "local")
    assert outcomes["paused: this PC is occupied"] > 0  # some began before the login was seen
    assert outcomes["failed: this PC is occupied"] > 0  # and some never began


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_a_start_racing_a_login_ends_frozen_with_docker(
    bus: Bus, unique: str, tmp_path: Path, docker_image: str
) -> None:
    node = f"drace{unique}"
    await race(bus, DockerRuntime(node), node, tmp_path, docker_image)
