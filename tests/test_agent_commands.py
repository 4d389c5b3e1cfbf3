"""A PC's command queue full of bad commands never takes the PC offline.

The agent connects with a real PC broker token (RabbitMQ's OAuth 2 backend), so it holds
only a PC's permissions: it may not write to ``idlecloud.dead-letter``, and dead-letters
through its own ``node.<pc>.dead`` key, which the platform binds there. Its queue is fed
malformed, oversized, deeply nested, failing and hanging commands (and a malformed one
naming a live replica) while two replicas run; real processes, a real broker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bus import names
from bus.codec import MAX_BODY_BYTES, encode
from bus.connection import Bus
from bus.consumer import Consumer
from bus.topology import QueueSpec
from nodeagent.agent import AgentSettings
from nodeagent.policy import PolicySettings
from nodeagent.runtime import Runtime
from nodeagent.runtime.spec import ReplicaSpec
from schemas import (
    Amount,
    ReplicaState,
    ReplicaStatus,
    Resources,
    ScaleRequest,
    StartReplica,
    StopReplica,
)

from .helpers import (
    DeadLetterTap,
    Events,
    collect_events,
    process_runtime,
    running_agent,
    wait_until,
)
from .login import Login

HEARTBEAT_S = 0.5
SLEEPER = (sys.executable, "-c", "import time; time.sleep(600)")


class HangsOn:
    """A runtime whose start of one replica never returns (a command that hangs)."""

    def __init__(self, inner: Runtime, replica_id: str) -> None:
        self.inner = inner
        self.name = inner.name
        self.replica_id = replica_id

    async def start(self, spec: ReplicaSpec, *, may_run: Callable[[], bool]) -> None:
        if spec.replica_id == self.replica_id:
            await asyncio.Event().wait()
        await self.inner.start(spec, may_run=may_run)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def start(node: str, replica_id: str, command: tuple[str, ...] = SLEEPER) -> StartReplica:
    return StartReplica(
        node=node, epoch=1, replica_id=replica_id, namespace="alice", app="sleepy",
        image="local", command=command, token="t",
        reservation=Resources(cpu_millicores=100, memory_mib=64),
    )  # fmt: skip


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_bad_commands_never_pause_heartbeats_touch_a_live_replica_or_outlive_a_restart(
    bus: Bus, login: Login, unique: str, tmp_path: Path
) -> None:
    node = f"wedge{unique}"
    events = Events(await collect_events(bus, f"node.{node}.#"))
    beats: list[float] = await collect_events(
        bus, f"node.{node}.heartbeat", lambda _message: time.monotonic()
    )  # when each arrived
    alive: list[float] = await collect_events(
        bus, f"node.{node}.alive", lambda _message: time.monotonic()
    )  # and each sign of life between them
    dead = await DeadLetterTap(names.node_commands_queue(node)).start(bus)
    settings = AgentSettings(
        node=node,
        capacity=Amount(cpu_millicores=4000, memory_mib=4096),
        desk_reserve=Amount(),
        utmp_path=tmp_path / "utmp",
        policy=PolicySettings(start_idle_s=0),
        heartbeat_s=HEARTBEAT_S,
    )
    runtime = HangsOn(process_runtime(tmp_path / "state", node), "hung")
    pc = await login.connect("node", node)
    good = start(node, "live0")
    body, properties = encode(good)
    refused = json.loads(body)
    refused["reservation"]["cpu_millicores"] = -5  # names live0, refused by the schema
    garbage = [
        *(b"\xff not json %d" % index for index in range(20)),
        b"x" * (MAX_BODY_BYTES + 1),
        nested(10_000),
        json.dumps(refused).encode(),
    ]
    try:
        async with running_agent(pc, settings, tmp_path / "state", runtime) as agent:  # type: ignore[arg-type]
            for replica_id in ("live0", "live1"):
                await bus.publish(start(node, replica_id))
            await wait_until(lambda: len(events.of(ReplicaStatus)) == 2, what="two replicas")
            pids = {k: r.pid for k, r in agent.runtime._replicas.items()}  # type: ignore[attr-defined]
            flood_from = time.monotonic()
            await bus.publish(start(node, "hung"))  # never returns
            await bus.publish(start(node, "fails", ("/nonexistent/program",)))
            for piece in garbage:
                await bus.publish_raw(names.route(good), piece, properties)
            await wait_until(lambda: len(dead.messages) == len(garbage), 30, "the dead letters")
            await wait_until(
                lambda: any(s.replica_id == "fails" for s in events.of(ReplicaStatus)),
                what="the failing start's status",
            )
            await asyncio.sleep(10 * HEARTBEAT_S)
            flood_beats = sorted(at for at in beats + alive if at >= flood_from)
            gaps = [later - earlier for earlier, later in itertools.pairwise(flood_beats)]
            print(
                f"{len(flood_beats)} signs of life during the flood, longest gap {max(gaps):.2f} s"
            )
            assert max(gaps) <= 2 * HEARTBEAT_S
            assert all(dead.header(i, "idlecloud-dead-reason") for i in range(len(garbage)))
            queues = {dead.header(i, "idlecloud-dead-queue") for i in range(len(garbage))}
            assert queues == {names.node_commands_queue(node)}
            touched = [s for s in events.of(ReplicaStatus) if s.replica_id in pids]
            assert [s.state for s in touched] == [ReplicaState.RUNNING] * 2  # nothing else
            replicas = {r.replica_id: r for r in await agent.runtime.replicas()}
            assert {replicas[r].state for r in pids} == {ReplicaState.RUNNING}
            assert {k: r.pid for k, r in agent.runtime._replicas.items()} == pids  # type: ignore[attr-defined]
        # the restarted agent adopts its replicas, takes the hung start again (it was never
        # settled), and meets nothing else of the flood
        async with running_agent(pc, settings, tmp_path / "state") as agent:
            await bus.publish(start(node, "after"))

            def started(replica_id: str) -> list[ReplicaState]:
                return [s.state for s in events.of(ReplicaStatus) if s.replica_id == replica_id]

            await wait_until(lambda: started("after"), 10, "the next start")
            assert started("after") == [ReplicaState.RUNNING]
            assert started("fails") == [ReplicaState.FAILED]  # once: it was settled
            assert len(dead.messages) == len(garbage)  # nothing came back
            for replica_id in ("live0", "live1", "after", "hung"):
                await bus.publish(StopReplica(node=node, epoch=1, replica_id=replica_id, grace_s=0))
    finally:
        await pc.close()


async def test_a_refused_dead_letter_is_rejected_for_good_and_the_consumer_goes_on(
    bus: Bus, login: Login, unique: str
) -> None:
    """Alice's consumer may not write to the platform's dead-letter exchange: a bad body
    is settled for good (not retried, not redelivered), and her next message is handled."""
    queue = f"ns.alice.inbox{unique}"
    handled: list[ScaleRequest] = []

    async def handle(message: ScaleRequest, _delivery: object) -> None:
        handled.append(message)

    alice = await login.connect("user", "alice")
    spec = QueueSpec.quorum(queue, **{"x-delivery-limit": 3})
    consumer = Consumer(spec, [ScaleRequest], handle, check_route=False)
    try:
        await consumer.start(alice)
        request = ScaleRequest(request_id=f"r{unique}", namespace="alice", app="a", replicas=1)
        body, properties = encode(request)
        target = names.Route("", queue)
        await bus.publish_raw(target, b"{ not json", properties)
        await bus.publish_raw(target, body, properties)
        await wait_until(lambda: len(handled) == 1, 15, "the valid message")
        assert consumer.dead_lettered == 0  # refused by the broker, so rejected instead
        await alice.publish(request)  # her publish channel works after the refusal
        info = await (await bus.channel()).declare_queue(queue, passive=True)
        assert info.declaration_result.message_count == 0
    finally:
        await consumer.stop(1)
        await alice.close()
