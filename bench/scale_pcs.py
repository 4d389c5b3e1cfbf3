"""Synthetic PCs for ``bench/scale.py``: N of them in one process, on the real broker.

Each PC has what a real agent's PC has on the broker: its door (declared on the
platform's connection, as a site without keys does) and its quorum command queue, bound
as an agent binds it. It beats once a second (the PCs spread evenly over the second) on
its door as an agent does: a whole heartbeat when something changed and every 5 s, a
``NodeAlive`` between (``--full-every 1``: every one whole, as agents did before). It
takes its commands, and reports the replicas it was told to start as running in its next
heartbeat (those it was told to stop, no more).

How they differ from real agents: no processes, cgroups or presence (every PC is idle and
stays so), a start is "running" at once, tokens are not checked, and one process speaks
for every PC, over one connection (an agent has its own). Publishing is pipelined: each
heartbeat waits for its confirm, as an agent's does, but the PCs do not wait for one
another.

Usage: python -m bench.scale_pcs URL --pcs N [--cpu-millicores 4000] [--full-every 5]
Prints ``ready`` once every queue is declared; on SIGTERM or end of input prints a JSON
line with what it sent and took.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus import names
from bus.codec import decode, delivery_of, encode
from bus.connection import broker_user_name
from bus.topology import QueueSpec, declare_door
from schemas import (
    Amount,
    NodeAlive,
    NodeHeartbeat,
    Owner,
    Presence,
    PresenceCause,
    PresenceState,
    RenewToken,
    ReplicaReport,
    ReplicaStart,
    ReplicaState,
    ReplicaStop,
    StartReplica,
    StartReplicas,
    StopReplica,
    StopReplicas,
)

ROOT = Path(__file__).resolve().parent.parent
_COUNTED = {"StartReplica": "starts", "StopReplica": "stops", "RenewToken": "renewals"}
#: Heartbeats go out in slices of this long.
_SLICE_S = 0.01
_COMMANDS = {
    cls.schema_name: cls
    for cls in (StartReplica, StartReplicas, StopReplica, StopReplicas, RenewToken)
}


def node_name(index: int) -> str:
    """The name of synthetic PC ``index``."""
    return f"syn{index:05d}"


class SyntheticPc:
    """One PC's heartbeat, and the replicas it was told to run."""

    def __init__(self, name: str, size: Amount, full_every: int) -> None:
        self.name = name
        self.size = size
        self.full_every = full_every
        self.seq = 0
        self.changed = True  # since the last whole heartbeat
        self.replicas: dict[str, ReplicaReport] = {}
        self.presence = Presence(
            state=PresenceState.IDLE, cause=PresenceCause.NONE, since=datetime.now(UTC)
        )

    def beat(self) -> NodeHeartbeat | NodeAlive:
        """A whole heartbeat when something changed or every ``full_every`` beats, as an
        agent sends it; a sign of life between."""
        self.seq += 1
        now = datetime.now(UTC)
        if not self.changed and self.seq % self.full_every:
            return NodeAlive(node=self.name, seq=self.seq, sent_at=now)
        self.changed = False
        return NodeHeartbeat(
            node=self.name, seq=self.seq, sent_at=now, capacity=self.size.wire(),
            allocatable=self.size.wire(), usage=Amount(0, 0).wire(), presence=self.presence,
            replicas=tuple(self.replicas.values()), batched_commands=True,
        )  # fmt: skip

    def take(self, command: ReplicaStart | ReplicaStop) -> None:
        self.changed = True
        if isinstance(command, ReplicaStop):
            self.replicas.pop(command.replica_id, None)
            return
        self.replicas[command.replica_id] = ReplicaReport(
            replica_id=command.replica_id, namespace=command.namespace, app=command.app,
            state=ReplicaState.RUNNING, reservation=command.reservation,
            usage=Amount(0, 0).wire(),
        )  # fmt: skip


async def run(url: str, count: int, size: Amount, full_every: int) -> dict[str, int]:
    pcs = [SyntheticPc(node_name(index), size, full_every) for index in range(count)]
    figures = {
        "pcs": count,
        "heartbeats": 0,
        "late_beats": 0,
        "starts": 0,
        "stops": 0,
        "renewals": 0,
        "start_messages": 0,
    }
    user = broker_user_name(url)
    connection = await aio_pika.connect(url, client_properties={"connection_name": "scale pcs"})
    setup = await connection.channel()
    for pc in pcs:
        await declare_door(setup, Owner.node(pc.name))
    consume = await connection.channel()
    await consume.set_qos(prefetch_count=1000)

    async def on_command(pc: SyntheticPc, message: AbstractIncomingMessage) -> None:
        command = decode(delivery_of(message), _COMMANDS, check_route=False)
        if isinstance(command, StartReplicas):
            for start in command.starts:
                pc.take(start)
            figures["starts"] += len(command.starts)
            figures["start_messages"] += 1
            return
        if isinstance(command, StopReplicas):
            for stop in command.stops:
                pc.take(stop)
            figures["stops"] += len(command.stops)
            return
        if isinstance(command, StartReplica | StopReplica):
            pc.take(command)
        figures[_COUNTED[command.schema_name]] += 1

    for pc in pcs:
        spec = QueueSpec.quorum(
            names.node_commands_queue(pc.name),
            (names.COMMANDS_EXCHANGE, names.node_command_keys(pc.name)),
        )
        queue = await spec.declare(setup)
        await queue.consume(functools.partial(on_command, pc), no_ack=True)
    print("ready", flush=True)
    publisher = await connection.channel()
    raw = cast(aiormq.Channel, await publisher.get_underlay_channel())  # it takes ``wait``
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    confirms: set[asyncio.Future[Any]] = set()
    started = time.monotonic()
    sent = 0  # heartbeats sent; PC i beats at i/N of every second
    while not stop.is_set():
        await asyncio.sleep(_SLICE_S)
        due = int((time.monotonic() - started) * count)
        if due - sent > count // 2:
            figures["late_beats"] += due - sent - count // 2
            sent = due - count // 2  # more than half a second behind: skip, as a slow PC would
        for _ in range(sent, due):
            pc = pcs[sent % count]
            sent += 1
            heartbeat = pc.beat()
            body, properties = encode(heartbeat)
            properties.user_id = user  # as Bus.publish does: the broker checks it
            target = names.route(heartbeat)
            confirm = asyncio.ensure_future(raw.basic_publish(
                body, exchange=target.exchange, routing_key=target.routing_key,
                properties=properties, wait=False,
            ))  # fmt: skip
            confirms.add(confirm)
            confirm.add_done_callback(confirms.discard)
            figures["heartbeats"] += 1
    await asyncio.gather(*confirms, return_exceptions=True)
    await connection.close()
    return figures


async def spawn(url: str, count: int, full_every: int = 5) -> asyncio.subprocess.Process:
    """Start ``count`` synthetic PCs in a process of their own; return once every door and
    queue is declared (stop it with ``terminate()``: it prints its figures as it ends).

    Raises:
        RuntimeError: the process did not say it was ready.
    """
    pcs = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.scale_pcs", url, "--pcs", str(count),
        "--full-every", str(full_every), cwd=ROOT, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert pcs.stdout is not None
    line = await asyncio.wait_for(pcs.stdout.readline(), timeout=60 + count / 50)
    if line.strip() != b"ready":
        pcs.kill()
        raise RuntimeError(f"the synthetic PCs did not start: {line!r}")
    return pcs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--pcs", type=int, required=True)
    parser.add_argument("--cpu-millicores", type=int, default=4000)
    parser.add_argument(
        "--full-every", type=int, default=5, help="a whole heartbeat every N (1: every one)"
    )
    arguments = parser.parse_args()
    size = Amount(arguments.cpu_millicores, 8192)
    figures = asyncio.run(run(arguments.url, arguments.pcs, size, arguments.full_every))
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
