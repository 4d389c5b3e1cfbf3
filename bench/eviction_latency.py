"""Milliseconds from a person's login until every replica on the PC is frozen.

Starts RabbitMQ with the helper the tests use (a scratch vhost), one real agent
(`bus agent run`, process runtime, or Docker with `--runtime docker`: dockerd and the
busybox test image come from the same helper as the tests) with 4 CPU-bound replicas
keeping both cores busy, then
for each trial writes a real login record into the agent's utmp file (libc pututxline) and
times until every process of every replica is frozen (its cgroup freezer FROZEN, or the
process stopped where the agent has no cgroups); it also times the agent's
NodePresence(busy) event. Then it logs out and waits for the replicas to resume.

Usage: python bench/eviction_latency.py [--trials N] [--runtime process|docker]
Prints the sample count, p50, and p99 with 100 trials or more; the last line is
`eviction_max_ms: X`, the worst trial (goal: <= 250).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil
from aio_pika.abc import AbstractIncomingMessage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.agent_rig import (  # noqa: E402
    RUNTIMES,
    end_replicas,
    prepare,
    remove_containers,
    replica_dir,
    replica_pids,
    start_agent,
    starts,
)
from bench.figures import summary  # noqa: E402
from bus import names  # noqa: E402
from bus.connection import Bus  # noqa: E402
from bus.topology import QueueSpec, declare_platform  # noqa: E402
from idlecloud.dev.services import scratch_vhost  # noqa: E402
from nodeagent.runtime.cgroup import Mounts  # noqa: E402
from nodeagent.runtime.process import frozen  # noqa: E402
from nodeagent.utmp import write_login, write_logout  # noqa: E402
from schemas import NodePresence, PresenceState  # noqa: E402
from tests.helpers import wait_until  # noqa: E402

NODE, REPLICAS = "bench-pc", 4
MOUNTS = Mounts.read()


def _replica_processes(work: Path, runtime: str) -> list[psutil.Process]:
    found = []
    for pid in replica_pids(NODE, work, runtime):
        leader = psutil.Process(pid)
        found += [leader, *leader.children(recursive=True)]
    return found


def _all(processes: list[psutil.Process], stopped: bool) -> bool:
    return all(frozen(p.pid, MOUNTS) is stopped for p in processes)


async def main(url: str, trials: int, runtime: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="eviction-"))
    utmp = work / "utmp"
    agent = await start_agent(url, NODE, work, runtime, "--continue-idle-s", "0.05")
    busy_events: list[float] = []

    async def on_presence(message: AbstractIncomingMessage) -> None:
        if NodePresence.model_validate_json(message.body).presence.state is PresenceState.BUSY:
            busy_events.append(time.perf_counter())

    freeze_ms: list[float] = []
    event_ms: list[float] = []
    try:
        async with Bus(url, connection_name="eviction bench") as bus:
            channel = await bus.channel()
            await declare_platform(bus)
            tap = await QueueSpec.private(
                "idlecloud.bench.presence", (names.EVENTS_EXCHANGE, f"node.{NODE}.presence")
            ).declare(channel)
            await tap.consume(on_presence, no_ack=True)
            tokens = replica_dir(NODE) / "tokens"
            await wait_until(tokens.is_dir, 30, "the agent to start")
            await asyncio.sleep(1.0)  # the agent's command queue exists once it consumes
            for command in starts(NODE, runtime, REPLICAS, busy=True, cpu_millicores=1000):
                await bus.publish(command)
            await wait_until(
                lambda: len(replica_pids(NODE, work, runtime)) == REPLICAS,
                60,
                "4 replicas",
                interval_s=0.2,
            )
            processes = _replica_processes(work, runtime)
            for _ in range(trials):
                await wait_until(lambda: _all(processes, stopped=False), 10, "the replicas to run")
                await asyncio.sleep(0.2)
                seen = len(busy_events)
                started = time.perf_counter()
                write_login(utmp, "student", "tty7")
                await wait_until(
                    lambda: _all(processes, stopped=True), 10, "the freeze", interval_s=0.0005
                )
                freeze_ms.append((time.perf_counter() - started) * 1000)
                await wait_until(lambda seen=seen: len(busy_events) > seen, 10, "the busy event")
                event_ms.append((busy_events[seen] - started) * 1000)
                write_logout(utmp, "tty7")
    finally:
        agent.send_signal(signal.SIGTERM)
        await agent.wait()
        end_replicas(NODE, work, runtime)  # frozen by the last login: thawed so they die
    print(f"trials: {trials}, replicas: {REPLICAS} CPU-bound, agent: {runtime} runtime")
    print("\n".join(summary("presence_event", event_ms) + summary("eviction", freeze_ms)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50, help="login/logout cycles (>= 50)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="process")
    arguments = parser.parse_args()
    prepare(arguments.runtime)
    try:
        with scratch_vhost("bench") as broker:
            asyncio.run(main(broker.url, arguments.trials, arguments.runtime))
    finally:
        if arguments.runtime == "docker":
            remove_containers(NODE)
