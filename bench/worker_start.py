"""What a replica's start costs: CPU-seconds and wall time from `bus worker` to its first
answer.

Every replica the platform starts (after each eviction, on another PC) pays this before
it computes anything: an interpreter importing the SDK, a connection to the broker, and
for ``executor="process"`` tasks a spawned pool process importing the app again. On a
lab PC a replica runs under a CPU quota, so a CPU-second of start-up is seconds of wall
time (``bench/goodput.py`` counts it against goodput).

Starts RabbitMQ with the helper the tests use (a scratch vhost), then ``--trials`` times:
spawns ``python -m idlecloud worker tests.programs.checkpoint_app:app`` (the goodput
bench's app), calls its ``plain`` task with no work (which runs in the pool process), and
reads the CPU the worker and its pool process had used when the answer came (psutil),
then stops it with SIGTERM. Then, on a started worker, one call of ``--call-units`` units
of 0.5 CPU-s each of ``count`` (a checkpoint every 3 s) and ``plain`` (none): the CPU the
worker spent beyond the units. Also times the imports alone (`python -c "import …"`, the same
interpreter) to show where the start-up goes.

Usage: python bench/worker_start.py [--trials 10] [--call-units 27]
Prints `start_cpu_s_mean`, `start_cpu_s_max`, `start_wall_s_mean`, each call's overhead
and the imports' CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bus.connection import Bus  # noqa: E402
from bus.sdk import TaskClient  # noqa: E402
from bus.topology import declare_platform  # noqa: E402
from idlecloud.dev.services import scratch_vhost  # noqa: E402
from tests.control_plane import CHECKPOINT_APP, checkpoint_client  # noqa: E402

IMPORTS = ("bus.sdk", "idlecloud.cli", "tests.programs.checkpoint_app")


def _tree_cpu_s(process: psutil.Process) -> tuple[float, float]:
    """CPU seconds the worker itself and its children (the pool) have used so far."""
    own = process.cpu_times()
    children = 0.0
    for child in process.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        children += times.user + times.system
    return own.user + own.system, children


def _import_cpu_s(module: str) -> float:
    """CPU seconds a fresh interpreter takes to import ``module`` (and start and exit)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "IDLECLOUD_NAMESPACE": "alice", "IDLECLOUD_APP": "count"}
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=ROOT, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


@contextlib.asynccontextmanager
async def _worker(url: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A fresh `bus worker` of the app, stopped with SIGTERM afterwards."""
    env = {**os.environ, "IDLECLOUD_NAMESPACE": "alice", "IDLECLOUD_APP": "count",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "idlecloud", "worker", CHECKPOINT_APP, "--url", url, cwd=ROOT, env=env
    )
    try:
        yield worker
    finally:
        worker.send_signal(signal.SIGTERM)
        await worker.wait()


async def _one_start(url: str, client: TaskClient, plain: Any) -> tuple[float, float, float]:
    started = time.monotonic()
    async with _worker(url) as worker:
        async with asyncio.timeout(60):
            await client.call(plain, 0, 0.0, os.devnull)
        wall_s = time.monotonic() - started
        own_s, pool_s = _tree_cpu_s(psutil.Process(worker.pid))
    return wall_s, own_s, pool_s


async def _call_overhead_s(url: str, client: TaskClient, task: Any, units: int) -> float:
    """CPU a started worker spends on one call of ``units`` half-CPU-second units beyond
    the units themselves (``count`` saves a checkpoint every 3 s, ``plain`` none)."""
    async with _worker(url) as worker:
        async with asyncio.timeout(60):
            await client.call(task, 0, 0.0, os.devnull)  # started: its start is not counted
        before = sum(_tree_cpu_s(psutil.Process(worker.pid)))
        async with asyncio.timeout(units * 0.5 * 10 + 60):
            await client.call(task, units, 0.5, os.devnull)
        return sum(_tree_cpu_s(psutil.Process(worker.pid))) - before - units * 0.5


async def main(url: str, trials: int, call_units: int) -> None:
    async with Bus(url, connection_name="worker start bench") as bus:
        await declare_platform(bus)
        app = checkpoint_client()
        samples = []
        overheads = {}
        async with TaskClient(bus, app) as client:
            for _ in range(trials):
                samples.append(await _one_start(url, client, app.tasks["plain"]))
            if call_units:
                for name in ("count", "plain"):
                    overheads[name] = await _call_overhead_s(url, client, app.tasks[name],
                                                             call_units)  # fmt: skip
    walls = [wall for wall, _, _ in samples]
    totals = [own + pool for _, own, pool in samples]
    print(f"trials: {trials} (each a fresh `bus worker {CHECKPOINT_APP}` to its first answer)")
    print(f"start_cpu_s_mean: {statistics.mean(totals):.3f}")
    print(f"start_cpu_s_max: {max(totals):.3f}")
    print(f"start_cpu_s_worker_mean: {statistics.mean(own for _, own, _ in samples):.3f}")
    print(f"start_cpu_s_pool_mean: {statistics.mean(pool for _, _, pool in samples):.3f}")
    print(f"start_wall_s_mean: {statistics.mean(walls):.3f} (no CPU quota)")
    for name, overhead_s in overheads.items():
        print(f"call_overhead_cpu_s[{name}]: {overhead_s:.3f} (one call of {call_units} "
              f"units of 0.5 CPU-s)")  # fmt: skip
    for module in IMPORTS:
        cost = statistics.mean(_import_cpu_s(module) for _ in range(3))
        print(f"import_cpu_s[{module}]: {cost:.3f} (mean of 3)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="workers started, one by one")
    parser.add_argument("--call-units", type=int, default=27,
                        help="units of the one call timed per task (0: none)")  # fmt: skip
    arguments = parser.parse_args()
    with scratch_vhost("bench") as broker:
        asyncio.run(main(broker.url, arguments.trials, arguments.call_units))
