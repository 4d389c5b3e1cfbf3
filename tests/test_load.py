"""The foreign-load signal with real processes: the platform's CPU never counts as a person's."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bus.connection import Bus
from nodeagent.agent import Agent, AgentSettings
from nodeagent.load import PLATFORM_MARKER, ForeignLoadSource
from nodeagent.policy import PolicySettings
from schemas import Amount, NodePresence, PresenceCause, PresenceState, Resources, StartReplica

from .helpers import collect_events, running_agent, wait_until
from .test_agent import parse_presence

SPIN = [sys.executable, "-c", "while True: pass"]


def spinner(marked: bool) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if key != PLATFORM_MARKER}
    if marked:
        env[PLATFORM_MARKER] = "1"
    return subprocess.Popen(SPIN, env=env)


@pytest.fixture
def spinners() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


async def test_foreign_cpu_counts_and_the_platforms_does_not(
    spinners: list[subprocess.Popen[bytes]],
) -> None:
    source = ForeignLoadSource(lambda _cores: None, platform_users=("rabbitmq",))
    assert source.sample() == 0.0  # the first sample is the baseline
    spinners.append(spinner(marked=True))
    await asyncio.sleep(1.0)
    assert source.sample() < 0.5, "a platform process counted as foreign load"
    spinners.append(spinner(marked=False))
    await asyncio.sleep(1.0)
    assert source.sample() > 0.4, "a busy foreign process went unnoticed"


@pytest.fixture
async def watched_agent(
    bus: Bus, unique: str, tmp_path: Path
) -> AsyncIterator[tuple[Agent, list[NodePresence]]]:
    node = f"load{unique}"
    presences = await collect_events(bus, f"node.{node}.presence", parse_presence)
    settings = AgentSettings(
        node=node,
        capacity=Amount(cpu_millicores=2000, memory_mib=2048),
        desk_reserve=Amount(),
        utmp_path=tmp_path / "utmp",
        policy=PolicySettings(
            start_idle_s=0, continue_idle_s=0.5, busy_load=0.3, busy_load_for_s=0.6
        ),
        load_sample_s=0.2,
        platform_users=("rabbitmq",),
    )
    async with running_agent(bus, settings, tmp_path / "state") as agent:
        yield agent, presences


async def test_sustained_foreign_load_makes_the_pc_busy_and_its_own_replicas_do_not(
    bus: Bus,
    watched_agent: tuple[Agent, list[NodePresence]],
    spinners: list[subprocess.Popen[bytes]],
) -> None:
    agent, presences = watched_agent
    await bus.publish(
        StartReplica(
            node=agent.settings.node, epoch=1, replica_id="spin", namespace="lab", app="spin",
            image="local", command=tuple(SPIN),
            reservation=Resources(cpu_millicores=1000, memory_mib=64), token="-",
        )
    )  # fmt: skip
    await wait_until(lambda: len(presences) == 1, what="the first presence")
    await asyncio.sleep(2.0)  # a busy replica of its own for 2 s: still idle
    assert [p.presence.state for p in presences] == [PresenceState.IDLE]
    spinners.append(spinner(marked=False))
    await wait_until(lambda: len(presences) == 2, timeout_s=10, what="busy from load")
    assert (presences[1].presence.state, presences[1].presence.cause) == (
        PresenceState.BUSY, PresenceCause.LOAD
    )  # fmt: skip
    spinners[0].kill()
    await wait_until(lambda: len(presences) == 3, timeout_s=10, what="idle again")
    assert presences[2].presence.state is PresenceState.IDLE
