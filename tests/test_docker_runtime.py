"""The Docker runtime against a real dockerd running real containers of a local image.

The image is Debian's static busybox imported with ``docker import`` (no registry is
reachable). Limits are checked where the kernel enforces them: the container's cgroup
files (v1 here) and its init process's /proc status, besides ``docker inspect``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bus.connection import Bus
from nodeagent.agent import Agent, AgentSettings
from nodeagent.policy import PolicySettings
from nodeagent.runtime.cgroup import Cgroup, Mounts
from nodeagent.runtime.container import DOCKER_CGROUP_PARENT
from nodeagent.runtime.docker import DockerRuntime
from nodeagent.runtime.spec import ReplicaInfo, ReplicaSpec, StartFailed
from nodeagent.sim import remove_containers
from nodeagent.tokens import TokenFiles
from nodeagent.utmp import write_login, write_logout
from schemas import (
    Amount,
    NodeHeartbeat,
    NodePresence,
    PresenceState,
    ReplicaState,
    ReplicaStatus,
    Resources,
    StartReplica,
)

from .helpers import Events, always, collect_events, running_agent, wait_until

SPIN = ("sh", "-c", "while :; do :; done")
MOUNTS = Mounts.read()


async def docker(*arguments: str) -> tuple[int, str]:
    """Run the docker client; its exit code and what it printed."""
    process = await asyncio.create_subprocess_exec(
        "docker", *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    return await process.wait(), output.decode()


async def inspect(name: str) -> dict[str, Any] | None:
    code, output = await docker("inspect", name)
    return json.loads(output)[0] if code == 0 else None


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def spec(image: str, replica_id: str, command: tuple[str, ...] = SPIN, **extra: Any) -> ReplicaSpec:
    return ReplicaSpec(replica_id, "alice", "stereo", image, command, **extra)


async def info(runtime: DockerRuntime, replica_id: str) -> ReplicaInfo:
    return next(r for r in await runtime.replicas(with_usage=True) if r.replica_id == replica_id)


def cpu_ns(pid: int) -> int:
    usage = Cgroup.of_pid(pid, MOUNTS).cpu_usage_ns()
    assert usage is not None
    return usage


@pytest.fixture
async def node(docker_image: str, unique: str) -> AsyncIterator[str]:
    name = f"dk{unique}"
    yield name
    remove_containers(name)


@pytest.fixture
async def runtime(node: str) -> AsyncIterator[DockerRuntime]:
    docker = DockerRuntime(node, usage_interval_s=0)
    yield docker
    await docker.close()


async def test_a_container_is_confined_to_its_reservation_as_an_unprivileged_user(
    runtime: DockerRuntime, docker_image: str, tmp_path: Path
) -> None:
    token_dir = TokenFiles(tmp_path).write("r1", "token-one")
    await runtime.start(spec(docker_image, "r1", reservation=Amount(500, 64),
                             token_dir=token_dir), may_run=always)  # fmt: skip
    await runtime.start(spec(docker_image, "r1"), may_run=always)  # idempotent
    details = await inspect(runtime.container_name("r1"))
    assert details is not None
    host, config = details["HostConfig"], details["Config"]
    assert (host["CpuQuota"], host["CpuPeriod"], host["Memory"]) == (50_000, 100_000, 64 * 2**20)
    assert (host["CapDrop"], host["SecurityOpt"]) == (["ALL"], ["no-new-privileges"])
    assert (host["NetworkMode"], host["PidsLimit"], host["CpuShares"]) == ("host", 512, 2)
    assert config["User"] == "65534:65534"
    assert config["Labels"]["org.idlecloud.node"] == runtime.node
    assert "IDLECLOUD_TOKEN_FILE=/run/idlecloud/token" in config["Env"]

    pid = details["State"]["Pid"]
    group = Cgroup.of_pid(pid, MOUNTS)
    assert (group.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
    # the lowest class, in a group under the agent's own groups at the lowest weight
    assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    holder = group.dirs["cpu"].parent  # a group of its own, to freeze it by, in the agent's
    assert holder == MOUNTS.v1["cpu"] / DOCKER_CGROUP_PARENT / runtime.container_name("r1")
    assert [(g / "cpu.shares").read_text().strip() for g in (holder, holder.parent)] == ["2"] * 2
    assert int((group.dirs["memory"] / "memory.limit_in_bytes").read_text()) == 64 * 2**20
    status = proc_status(pid)
    assert status["Uid"].split()[0] == "65534"
    assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"].strip() == "1"

    name = runtime.container_name("r1")
    assert await docker("exec", name, "cat", "/run/idlecloud/token") == (0, "token-one")
    written, _ = await docker("exec", name, "sh", "-c", "echo x > /run/idlecloud/token")
    assert written != 0  # mounted read-only
    TokenFiles(tmp_path).write("r1", "token-two")  # a renewal is seen through the mount
    assert await docker("exec", name, "cat", "/run/idlecloud/token") == (0, "token-two")

    await info(runtime, "r1")  # the first reading sets the CPU baseline
    await asyncio.sleep(1.0)
    running = await info(runtime, "r1")
    assert running.state is ReplicaState.RUNNING
    assert 200 < running.usage.cpu_millicores <= 600  # held to its 500m quota
    assert running.reservation.cpu_millicores == 500


async def test_paused_uses_no_cpu_an_evicted_paused_one_never_runs_and_stopped_is_gone(
    runtime: DockerRuntime, docker_image: str
) -> None:
    await runtime.start(spec(docker_image, "r2", reservation=Amount(300, 256)), may_run=always)
    name = runtime.container_name("r2")
    details = await inspect(name)
    assert details is not None
    pid = details["State"]["Pid"]
    await runtime.pause("r2")
    group = Cgroup.of_pid(pid, MOUNTS)
    await wait_until(group.frozen, what="the freezer to say FROZEN")
    frozen_at = cpu_ns(pid)
    await asyncio.sleep(0.5)
    assert cpu_ns(pid) == frozen_at
    assert (await info(runtime, "r2")).state is ReplicaState.PAUSED
    await runtime.resume("r2")
    await asyncio.sleep(0.3)
    assert cpu_ns(pid) > frozen_at
    await runtime.pause("r2")
    await wait_until(group.frozen, what="the second freeze")
    frozen_at = cpu_ns(pid)
    started = time.monotonic()
    await runtime.stop("r2", grace_s=30)  # paused: SIGKILL at once, never thawed to run
    # dockerd waits up to 10 s for the end of a killed container it finds still held
    assert time.monotonic() - started < 5
    assert await inspect(name) is None  # removed, and its holder in every hierarchy
    holder = group.dirs["freezer"].parent.relative_to(MOUNTS.v1["freezer"])
    assert [h for h in MOUNTS.hierarchies if (h / holder).exists()] == []
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert await runtime.replicas() == []


async def test_sigterm_then_sigkill_and_an_exit_code_with_the_last_log_lines(
    runtime: DockerRuntime, docker_image: str
) -> None:
    stubborn = ("sh", "-c", "trap '' TERM; while :; do sleep 1; done")
    await runtime.start(spec(docker_image, "stubborn", stubborn), may_run=always)
    failing = ("sh", "-c", "echo loading pair 17 >&2; echo 'ValueError: bad pair' >&2; exit 3")
    await runtime.start(spec(docker_image, "failing", failing), may_run=always)
    await runtime.stop("stubborn", grace_s=1)
    assert await inspect(runtime.container_name("stubborn")) is None
    for _ in range(100):  # up to 10 s for the exit
        exited = await info(runtime, "failing")
        if exited.exit_code is not None:
            break
        await asyncio.sleep(0.1)
    assert (exited.state, exited.exit_code) == (ReplicaState.FAILED, 3)
    assert exited.log_tail == ("loading pair 17", "ValueError: bad pair")


async def test_an_image_that_does_not_exist_is_refused_with_the_reason(
    runtime: DockerRuntime,
) -> None:
    with pytest.raises(StartFailed, match="cannot pull idlecloud/no-such-image:1"):
        await runtime.start(spec("idlecloud/no-such-image:1", "r4"), may_run=always)
    assert await runtime.replicas() == []


async def test_a_restarted_runtime_adopts_its_containers_and_leaves_another_nodes_alone(
    runtime: DockerRuntime, docker_image: str, node: str
) -> None:
    await runtime.start(spec(docker_image, "mine"), may_run=always)
    other = DockerRuntime(f"{node}-other")
    try:
        await other.start(spec(docker_image, "theirs"), may_run=always)
        # A container of the other node that happens to carry our naming scheme.
        impostor = other.container_name("theirs")
        assert (await docker("rename", impostor, runtime.container_name("theirs")))[0] == 0
        restarted = DockerRuntime(node)
        try:
            adopted = await restarted.replicas()
            assert [(r.replica_id, r.state) for r in adopted] == [("mine", ReplicaState.RUNNING)]
            await restarted.pause("theirs")
            await restarted.stop("theirs", grace_s=0)
            survivor = await inspect(runtime.container_name("theirs"))
            assert survivor is not None and survivor["State"]["Status"] == "running"
            await restarted.stop("mine", grace_s=0)
            assert await restarted.replicas() == []
        finally:
            await restarted.close()
    finally:
        await other.close()
        remove_containers(f"{node}-other")


async def test_the_agent_pauses_containers_before_saying_busy_and_adopts_them_after_a_restart(
    bus: Bus, node: str, docker_image: str, tmp_path: Path
) -> None:
    events = Events(await collect_events(bus, f"node.{node}.#"))
    settings = AgentSettings(
        node=node,
        capacity=Amount(cpu_millicores=2000, memory_mib=2048),
        desk_reserve=Amount(),
        utmp_path=tmp_path / "utmp",
        policy=PolicySettings(start_idle_s=0, continue_idle_s=0.3, max_suspend_s=60),
        heartbeat_s=0.2,
    )
    first = Agent(settings, DockerRuntime(node), TokenFiles(tmp_path / "state"))
    await first.start(bus)
    try:
        for replica_id, image in (("a", docker_image), ("b", docker_image),
                                  ("c", "idlecloud/no-such-image:1")):  # fmt: skip
            await bus.publish(
                StartReplica(
                    node=node, epoch=1, replica_id=replica_id, namespace="alice", app="spin",
                    image=image, command=SPIN, token="t",
                    reservation=Resources(cpu_millicores=300, memory_mib=32),
                )
            )  # fmt: skip
        await wait_until(
            lambda: len(events.of(ReplicaStatus)) == 3, timeout_s=30, what="three statuses"
        )
        by_id = {status.replica_id: status for status in events.of(ReplicaStatus)}
        assert by_id["a"].state is by_id["b"].state is ReplicaState.RUNNING
        assert by_id["c"].state is ReplicaState.FAILED
        assert by_id["c"].reason.startswith("cannot pull idlecloud/no-such-image:1")
    finally:
        await first.stop(1)  # the containers keep running for the next agent
    containers = [DockerRuntime(node).container_name(r) for r in ("a", "b")]

    async with running_agent(bus, settings, tmp_path / "state", DockerRuntime(node)) as agent:
        seen = len(events.of(NodeHeartbeat))
        await wait_until(
            lambda: len(events.of(NodeHeartbeat)) > seen, what="the new agent's heartbeat"
        )
        adopted = events.of(NodeHeartbeat)[-1].replicas
        assert sorted((r.replica_id, r.state) for r in adopted) == [
            ("a", ReplicaState.RUNNING), ("b", ReplicaState.RUNNING)
        ]  # fmt: skip

        seen = len(events.of(NodePresence))
        write_login(settings.utmp_path, "student", "tty7")
        await wait_until(lambda: len(events.of(NodePresence)) > seen, what="presence busy")
        assert events.of(NodePresence)[-1].presence.state is PresenceState.BUSY
        for name in containers:  # paused before the event was published
            details = await inspect(name)
            assert details is not None and details["State"]["Paused"]
        write_logout(settings.utmp_path, "tty7")
        await wait_until(lambda: agent.decision.accepting, what="the PC to take work again")
        for name in containers:
            details = await inspect(name)
            assert details is not None and not details["State"]["Paused"]
