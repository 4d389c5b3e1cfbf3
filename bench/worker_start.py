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
then stops it with SIGTERM. Also times the imports alone (`python -c "import …"`, the same
interpreter) to show where the start-up goes.

Usage: python bench/worker_start.py [--trials 10]
Prints `start_cpu_s_mean`, `start_cpu_s_max`, `start_wall_s_mean` and the imports' CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bus.connection import Bus  # noqa: E402
from bus.sdk import App, TaskClient  # noqa: E402
from bus.topology import declare_platform  # noqa: E402
from idlecloud.dev.services import scratch_vhost  # noqa: E402

TARGET = "tests.programs.checkpoint_app:app"
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


async def _one_start(url: str, client: TaskClient, plain: Any) -> tuple[float, float, float]:
    env = {**os.environ, "IDLECLOUD_NAMESPACE": "alice", "IDLECLOUD_APP": "count",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    started = time.monotonic()
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "idlecloud", "worker", TARGET, "--url", url, cwd=ROOT, env=env
    )
    try:
        async with asyncio.timeout(60):
            await client.call(plain, 0, 0.0, os.devnull)
        wall_s = time.monotonic() - started
        own_s, pool_s = _tree_cpu_s(psutil.Process(worker.pid))
    finally:
        worker.send_signal(signal.SIGTERM)
        await worker.wait()
    return wall_s, own_s, pool_s


async def main(url: str, trials: int) -> None:
    async with Bus(url, connection_name="worker start bench") as bus:
        await declare_platform(bus)
        app = App("alice", "count")

        @app.task(executor="inline")
        def plain(units: int, unit_s: float, ledger: str) -> dict[str, int]:
            raise NotImplementedError  # served by the worker under test

        samples = []
        async with TaskClient(bus, app) as client:
            for _ in range(trials):
                samples.append(await _one_start(url, client, plain))
    walls = [wall for wall, _, _ in samples]
    totals = [own + pool for _, own, pool in samples]
    print(f"trials: {trials} (each a fresh `bus worker {TARGET}` to its first answer)")
    print(f"start_cpu_s_mean: {statistics.mean(totals):.3f}")
    print(f"start_cpu_s_max: {max(totals):.3f}")
    print(f"start_cpu_s_worker_mean: {statistics.mean(own for _, own, _ in samples):.3f}")
    print(f"start_cpu_s_pool_mean: {statistics.mean(pool for _, _, pool in samples):.3f}")
    print(f"start_wall_s_mean: {statistics.mean(walls):.3f} (no CPU quota)")
    for module in IMPORTS:
        cost = statistics.mean(_import_cpu_s(module) for _ in range(3))
        print(f"import_cpu_s[{module}]: {cost:.3f} (mean of 3)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="workers started, one by one")
    arguments = parser.parse_args()
    with scratch_vhost("bench") as broker:
        asyncio.run(main(broker.url, arguments.trials))
