"""Seconds from pulling a PC's plug until every one of its replicas runs elsewhere.

Starts RabbitMQ with the helper the tests use, then the same control plane the tests use
(a fresh vhost, the quota manager and placement with their production defaults: node lost
after 3 s without a heartbeat, agents heartbeating every second) and the thesis's four
simulated PCs. 12 replicas of 1 CPU run on 20 CPUs. Each trial kills the PC running the
most replicas (`bus sim kill`: its agent and replicas die at once) and times until a
`ReplicaStatus(running)` has arrived for as many new replicas as it ran; then the PC
comes back for the next trial.

Usage: python bench/node_loss.py [--trials 10]
Prints the sample count, p50, p99 (with 100 trials or more) and max; the last line is
`replacement_max_s: X` (goal: <= 5).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from aio_pika.abc import AbstractIncomingMessage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.figures import summary  # noqa: E402
from idlecloud.dev.services import ensure_rabbitmq  # noqa: E402
from schemas import ReplicaState, ReplicaStatus  # noqa: E402
from services.placement.service import PlacementSettings  # noqa: E402
from tests.control_plane import control_plane, thesis_pcs  # noqa: E402
from tests.helpers import collect_events, wait_until  # noqa: E402

REPLICAS = 12
AGENT_ARGS = ("--start-idle-s", "0", "--continue-idle-s", "1")


async def main(trials: int) -> None:
    pcs = thesis_pcs("")
    work = Path(tempfile.mkdtemp(prefix="node-loss-"))
    seconds: list[float] = []
    async with control_plane(
        work, pcs, settings=PlacementSettings(), agent_args=AGENT_ARGS
    ) as plane:
        started: list[tuple[float, str]] = []

        def on_status(message: AbstractIncomingMessage) -> ReplicaStatus:
            status = ReplicaStatus.model_validate_json(message.body)
            if status.state is ReplicaState.RUNNING:
                started.append((time.perf_counter(), status.replica_id))
            return status

        await collect_events(plane.bus, "node.*.replica", on_status)
        await plane.quota("bench", 40_000)
        assert (await plane.deploy("bench", "spin", REPLICAS)).accepted
        for trial in range(trials):
            deadline = time.monotonic() + 60
            while (await plane.running("bench")) != REPLICAS:
                if time.monotonic() > deadline:
                    raise SystemExit("the replicas did not all run")
                await asyncio.sleep(0.2)
            per_pc = (await plane.apps("bench")).apps[0].replicas_per_node
            victim = max(per_pc, key=lambda name: per_pc[name])
            lost = per_pc[victim]
            before = len(started)
            killed_at = time.perf_counter()
            plane.simulation.kill(victim)
            await wait_until(
                lambda before=before, lost=lost: len(started) - before >= lost, 60, "replacements"
            )
            seconds.append(started[before + lost - 1][0] - killed_at)
            print(f"trial {trial}: {lost} replicas of {victim} replaced in {seconds[-1]:.2f} s")
            plane.simulation.up(plane.url, tuple(pc for pc in pcs if pc.name == victim),
                                extra_args=AGENT_ARGS)  # fmt: skip
            await asyncio.sleep(2.0)  # it heartbeats again before the next trial
    print(f"trials: {trials}, replicas: {REPLICAS}, node_timeout_s: 3, heartbeat 1 s")
    print("\n".join(summary("replacement", seconds, unit="s", digits=2)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    arguments = parser.parse_args()
    ensure_rabbitmq()
    asyncio.run(main(arguments.trials))
