"""A PC's agent on the real broker: commands, heartbeats, and a person logging in and out.

Real utmp records (libc pututxline) drive presence; replicas are real process groups.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from aio_pika.abc import AbstractIncomingMessage

from bus.codec import encode
from bus.connection import Bus
from bus.names import route
from idlecloud.dev.services import BrokerInfo
from nodeagent.agent import Agent, AgentSettings
from nodeagent.policy import PolicySettings
from nodeagent.runtime.cgroup import Mounts
from nodeagent.runtime.process import ProcessRuntime, frozen
from nodeagent.timetable import Timetable
from nodeagent.utmp import write_login, write_logout
from schemas import (
    Amount,
    MetricSample,
    NodeAlive,
    NodeHeartbeat,
    NodePresence,
    PresenceCause,
    PresenceState,
    RenewToken,
    ReplicaStart,
    ReplicaState,
    ReplicaStatus,
    ReplicaStop,
    Resources,
    StartReplica,
    StartReplicas,
    StopReplica,
    StopReplicas,
)

from .helpers import Events, collect_events, running_agent, wait_until


def parse_presence(message: AbstractIncomingMessage) -> NodePresence:
    return NodePresence.model_validate_json(message.body)


ONE_CPU = Resources(cpu_millicores=1000, memory_mib=128)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def rig(bus: Bus, unique: str, tmp_path: Path) -> AsyncIterator[tuple[Agent, Events]]:
    node = f"pc{unique}"
    events = Events(await collect_events(bus, f"node.{node}.#"))
    settings = AgentSettings(
        node=node,
        capacity=Amount(cpu_millicores=4000, memory_mib=4096),
        desk_reserve=Amount(cpu_millicores=1000, memory_mib=1024),
        utmp_path=tmp_path / "utmp",
        policy=PolicySettings(start_idle_s=0, continue_idle_s=0.5, max_suspend_s=60),
        heartbeat_s=0.2,
    )
    async with running_agent(bus, settings, tmp_path / "state") as agent:
        yield agent, events


def start(
    agent: Agent, replica_id: str, epoch: int = 5, reservation: Resources = ONE_CPU
) -> StartReplica:
    return StartReplica(
        node=agent.settings.node, epoch=epoch, replica_id=replica_id, namespace="alice",
        app="stereo", image="local", command=(sys.executable, "-c", "while True: pass"),
        reservation=reservation, token="not-used-by-the-process-runtime",
    )  # fmt: skip


def is_frozen(agent: Agent, replica_id: str) -> bool:
    runtime = agent.runtime
    assert isinstance(runtime, ProcessRuntime)
    return frozen(runtime._replicas[replica_id].pid, Mounts.read())


async def test_the_agent_runs_replicas_and_gets_out_of_the_way_of_a_person(
    bus: Bus, rig: tuple[Agent, Events]
) -> None:
    agent, events = rig
    node = agent.settings.node
    await wait_until(lambda: len(events.of(NodePresence)) == 1, what="the first presence")
    assert events.of(NodePresence)[0].presence.state is PresenceState.IDLE

    await bus.publish(start(agent, "r1"))
    too_big = Resources(cpu_millicores=3000, memory_mib=128)  # 3 CPUs allocatable, 1 used
    await bus.publish(start(agent, "r2", reservation=too_big))
    await wait_until(lambda: len(events.of(ReplicaStatus)) == 2, what="two replica statuses")
    by_id = {s.replica_id: s for s in events.of(ReplicaStatus)}
    assert by_id["r1"].state is ReplicaState.RUNNING
    assert (by_id["r2"].state, by_id["r2"].reason) == (
        ReplicaState.FAILED, "needs 3000m/128MiB, free 2000m/2944MiB"
    )  # fmt: skip
    await wait_until(
        lambda: any(
            h.replicas and h.replicas[0].replica_id == "r1" for h in events.of(NodeHeartbeat)
        ),
        what="a heartbeat listing r1",
    )
    beat = events.of(NodeHeartbeat)[-1]
    assert (beat.node, beat.allocatable, beat.runtime) == (
        node, Resources(cpu_millicores=3000, memory_mib=3072), "process"
    )  # fmt: skip

    write_login(agent.settings.utmp_path, "student", "tty7")
    await wait_until(lambda: is_frozen(agent, "r1"), what="a pause")
    await wait_until(lambda: len(events.of(NodePresence)) == 2, what="presence busy")
    busy = events.of(NodePresence)[1].presence
    assert (busy.state, busy.cause) == (PresenceState.BUSY, PresenceCause.SESSION)
    await bus.publish(start(agent, "r3"))
    await wait_until(lambda: len(events.of(ReplicaStatus)) == 3, what="a refusal")
    assert events.of(ReplicaStatus)[2].reason == "this PC is occupied (session)"

    write_logout(agent.settings.utmp_path, "tty7")
    await wait_until(lambda: not is_frozen(agent, "r1"), what="a resume")
    await wait_until(lambda: len(events.of(NodePresence)) == 3, what="presence idle again")
    assert events.of(NodePresence)[2].presence.state is PresenceState.IDLE

    stale = StopReplica(node=node, epoch=3, replica_id="r1", grace_s=0)
    await bus.publish(stale)
    await bus.publish(StopReplica(node=node, epoch=5, replica_id="r-unknown", grace_s=0))
    await wait_until(lambda: agent._commands.handled >= 5, what="the commands handled")
    assert [r.replica_id for r in await agent.runtime.replicas()] == ["r1"]  # stale one dropped
    await bus.publish(StopReplica(node=node, epoch=6, replica_id="r1", grace_s=0))
    await wait_until(lambda: agent._commands.handled >= 6, what="the stop")
    assert await agent.runtime.replicas() == []


async def test_class_hours_keep_the_pc_busy(bus: Bus, unique: str, tmp_path: Path) -> None:
    """A timetable window covering the agent's (injected) wall clock makes it report busy,
    cause timetable."""
    node = f"pc{unique}"
    presences = await collect_events(bus, f"node.{node}.presence", parse_presence)
    settings = AgentSettings(
        node=node,
        capacity=Amount(cpu_millicores=2000, memory_mib=2048),
        desk_reserve=Amount(),
        utmp_path=tmp_path / "utmp",
        policy=PolicySettings(start_idle_s=0),
        timetable=Timetable.parse(["mon 09:30-10:30"]),
    )
    monday_ten = lambda: datetime(2026, 12, 7, 10, 0)  # noqa: E731  (a Monday, local time)
    async with running_agent(bus, settings, tmp_path / "state", wall_clock=monday_ten) as agent:
        await wait_until(lambda: len(presences) == 1, what="the first presence")
        assert (presences[0].presence.state, presences[0].presence.cause) == (
            PresenceState.BUSY, PresenceCause.TIMETABLE
        )  # fmt: skip
        assert not agent.decision.accepting


async def test_bus_agent_run_takes_settings_from_toml_and_flags_win(
    broker: BrokerInfo, bus: Bus, unique: str, tmp_path: Path
) -> None:
    node = f"toml{unique}"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'node = "{node}"\ncpu_millicores = 1234\nmemory_mib = 999\n'
        'timetable = ["mon 00:00-00:01"]\nheartbeat_s = 0.2\n'
    )
    beats = await collect_events(
        bus, f"node.{node}.heartbeat", lambda m: NodeHeartbeat.model_validate_json(m.body)
    )
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "idlecloud", "agent", "run", "--config", str(config),
        "--memory-mib", "777", "--utmp", str(tmp_path / "utmp"),
        "--state-dir", str(tmp_path / "state"), "--url", broker.url,
        cwd=ROOT,
    )  # fmt: skip
    try:
        await wait_until(lambda: bool(beats), timeout_s=30, what="a heartbeat")
        assert beats[0].capacity == Resources(cpu_millicores=1234, memory_mib=777)
    finally:
        agent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(agent.wait(), 30) == 0


async def test_a_replica_gets_the_contract_reports_its_end_and_then_holds_no_capacity(
    bus: Bus, rig: tuple[Agent, Events]
) -> None:
    """The replica reads its environment and token file, exits 3; the agent says so."""
    agent, events = rig
    most = Resources(cpu_millicores=2500, memory_mib=128)  # 3 CPUs allocatable
    script = (
        "import os, sys; e = os.environ; "
        "print(e['IDLECLOUD_NAMESPACE'], e['IDLECLOUD_APP'], e['IDLECLOUD_REPLICA']); "
        "print(open(e['IDLECLOUD_TOKEN_FILE']).read()); sys.exit(3)"
    )
    quick = start(agent, "quick", reservation=most)
    await bus.publish(quick.model_copy(update={"command": (sys.executable, "-c", script)}))
    await wait_until(
        lambda: any(s.exit_code is not None for s in events.of(ReplicaStatus)), what="its end"
    )
    started, ended = events.of(ReplicaStatus)
    assert (started.state, ended.state, ended.exit_code) == (
        ReplicaState.RUNNING, ReplicaState.FAILED, 3
    )  # fmt: skip
    assert ended.reason == "exited with code 3"
    assert ended.log_tail == ("alice stereo quick", "not-used-by-the-process-runtime")
    await bus.publish(start(agent, "next", reservation=most))
    await wait_until(lambda: len(events.of(ReplicaStatus)) == 3, what="the second start")
    assert events.of(ReplicaStatus)[2].state is ReplicaState.RUNNING
    assert len([s for s in events.of(ReplicaStatus) if s.exit_code is not None]) == 1  # once


async def test_a_renewed_token_is_rewritten_in_place(bus: Bus, rig: tuple[Agent, Events]) -> None:
    agent, events = rig
    await bus.publish(start(agent, "renewed"))
    await wait_until(lambda: len(events.of(ReplicaStatus)) == 1, what="the start")
    token_file = agent.tokens.folder("renewed") / "token"
    assert token_file.read_text() == "not-used-by-the-process-runtime"
    node = agent.settings.node
    await bus.publish(RenewToken(node=node, epoch=5, replica_id="renewed", token="fresh"))
    await wait_until(lambda: token_file.read_text() == "fresh", what="the renewal")
    await bus.publish(StopReplica(node=node, epoch=5, replica_id="renewed", grace_s=0))
    await wait_until(lambda: not token_file.parent.exists(), what="the token's removal")


async def test_starts_and_stops_in_one_message_each_as_if_it_came_alone(
    bus: Bus, rig: tuple[Agent, Events]
) -> None:
    """A StartReplicas is as its starts sent alone: each runs with its own token, and the
    one that does not fit what the others leave is refused alone; a StopReplicas stops
    them all. Heartbeats say the agent takes them (placement sends them only then)."""
    agent, events = rig
    ones = [start(agent, f"b{index}").model_copy(update={"token": f"token-{index}"})
            for index in range(4)]  # 3 CPUs allocatable: 4 x 1  # fmt: skip
    batch = StartReplicas(
        node=agent.settings.node, epoch=5,
        starts=tuple(ReplicaStart(**one.model_dump(exclude={"node", "epoch"})) for one in ones),
    )  # fmt: skip
    await bus.publish(batch)
    await wait_until(lambda: len(events.of(ReplicaStatus)) == 4, what="four statuses")
    states = sorted(status.state.value for status in events.of(ReplicaStatus))
    assert states == ["failed", "running", "running", "running"]
    running = sorted(status.replica_id for status in events.of(ReplicaStatus)
                     if status.state is ReplicaState.RUNNING)  # fmt: skip
    assert sorted(r.replica_id for r in await agent.runtime.replicas()) == running
    for rid in running:
        assert (agent.tokens.folder(rid) / "token").read_text() == f"token-{rid[1:]}"
    stops = tuple(ReplicaStop(replica_id=rid, grace_s=0) for rid in running)
    await bus.publish(StopReplicas(node=agent.settings.node, epoch=5, stops=stops))
    runtime = agent.runtime
    assert isinstance(runtime, ProcessRuntime)
    await wait_until(lambda: not runtime._replicas, what="every replica stopped")
    assert not any(agent.tokens.folder(rid).exists() for rid in running)
    await wait_until(lambda: bool(events.of(NodeHeartbeat)), what="a heartbeat")
    assert events.of(NodeHeartbeat)[-1].batched_commands


async def test_between_whole_heartbeats_a_sign_of_life_and_a_change_goes_whole_at_once(
    bus: Bus, rig: tuple[Agent, Events]
) -> None:
    """Heartbeats every 0.2 s, whole at least every 5 s: while nothing changes, signs of
    life (a few dozen bytes) go between; a new replica is in the very next heartbeat."""
    agent, events = rig
    node = agent.settings.node
    alive = await collect_events(
        bus, f"node.{node}.alive", lambda m: NodeAlive.model_validate_json(m.body)
    )
    await wait_until(lambda: len(alive) >= 5, what="five signs of life")
    whole = len(events.of(NodeHeartbeat))
    assert whole <= 2  # the first, and at most one more in the 5 s since
    await bus.publish(start(agent, "seen"))
    await wait_until(lambda: len(events.of(ReplicaStatus)) == 1, what="the start")
    started_seq = max(beat.seq for beat in alive)
    await wait_until(
        lambda: any(r.replica_id == "seen" for b in events.of(NodeHeartbeat) for r in b.replicas),
        timeout_s=2, what="a whole heartbeat listing it",
    )  # fmt: skip
    listing = next(b for b in events.of(NodeHeartbeat) if b.replicas)
    assert listing.seq <= started_seq + 3  # the first beats after the start, not seconds on
    assert all(len(encode(a)[0]) < 120 for a in alive)


async def test_a_malformed_command_changes_nothing_it_names_and_the_agent_goes_on(
    bus: Bus, rig: tuple[Agent, Events]
) -> None:
    agent, events = rig
    good = start(agent, "good")
    body, properties = encode(start(agent, "bad"))
    broken = json.loads(body)
    broken["reservation"]["cpu_millicores"] = -5  # out of range: refused by the schema
    await bus.publish_raw(route(good), json.dumps(broken).encode(), properties)
    await bus.publish_raw(route(good), b"\xff not json", properties)  # names nothing
    await bus.publish(good)
    await wait_until(lambda: len(events.of(ReplicaStatus)) == 1, what="the good one's status")
    await wait_until(lambda: agent._commands.dead_lettered == 2, what="two dead letters")
    await asyncio.sleep(0.5)
    assert [(s.replica_id, s.state) for s in events.of(ReplicaStatus)] == [
        ("good", ReplicaState.RUNNING)
    ]  # the refused one is not reported, whatever it names


async def test_a_command_from_a_leader_far_ahead_is_refused_and_the_real_leader_obeyed(
    bus: Bus, rig: tuple[Agent, Events]
) -> None:
    agent, events = rig
    await bus.publish(start(agent, "first", epoch=5))
    await wait_until(lambda: len(events.of(ReplicaStatus)) == 1, what="the first start")
    await bus.publish(StopReplica(node=agent.settings.node, epoch=2**52, replica_id="first",
                                  grace_s=0))  # fmt: skip
    await wait_until(lambda: agent._commands.dead_lettered == 1, what="the refusal")
    assert [r.replica_id for r in await agent.runtime.replicas()] == ["first"]  # untouched
    await bus.publish(start(agent, "second", epoch=5))  # the real leader goes on
    await wait_until(lambda: len(events.of(ReplicaStatus)) == 2, what="the second start")
    assert events.of(ReplicaStatus)[1].state is ReplicaState.RUNNING


async def test_a_namespace_whose_last_replica_left_is_sampled_as_departed_once(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    node = f"pc{unique}"
    samples = Events(await collect_events(bus, f"node.{node}.metrics"))
    settings = AgentSettings(
        node=node, capacity=Amount(cpu_millicores=4000, memory_mib=4096),
        desk_reserve=Amount(), utmp_path=tmp_path / "utmp",
        policy=PolicySettings(start_idle_s=0), metrics_s=0.2,
    )  # fmt: skip
    async with running_agent(bus, settings, tmp_path / "state") as agent:
        await bus.publish(start(agent, "leaving"))
        await wait_until(lambda: any(s.replicas for s in samples.of(MetricSample)), 10,
                         "a sample with the replica")  # fmt: skip
        await bus.publish(StopReplica(node=node, epoch=5, replica_id="leaving", grace_s=0))
        await wait_until(lambda: any(s.departed for s in samples.of(MetricSample)), 10,
                         "a sample saying alice left")  # fmt: skip
        await asyncio.sleep(0.6)  # a few samples more
    departed = [s.departed for s in samples.of(MetricSample) if s.departed]
    assert departed == [("alice",)]  # once, in the first sample without her
