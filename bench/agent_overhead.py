"""What an idle agent costs its PC: CPU share of one core and resident memory.

Starts RabbitMQ with the helper the tests use (a scratch vhost) and one real agent
(`bus agent run`, process runtime, heartbeat every second, the utmp session source
watching) running 4 idle replicas, lets it settle, then measures the agent process alone
over the window.

Usage: python bench/agent_overhead.py [--seconds 60]
Prints `agent_cpu_percent: X` (share of one core; goal <= 0.5) and `agent_rss_mib: Y`
(goal <= 64).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bus.connection import Bus  # noqa: E402
from bus.devservices import scratch_vhost  # noqa: E402
from bus.topology import declare_platform  # noqa: E402
from schemas import Resources, StartReplica  # noqa: E402

NODE, REPLICAS = "overhead-pc", 4


async def main(url: str, seconds: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="overhead-"))
    state = work / "state"
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bus", "agent", "run", "--url", url, "--node", NODE,
        "--utmp", str(work / "utmp"), "--state-dir", str(state), "--start-idle-s", "0",
        cwd=ROOT, env={**os.environ, "IDLECLOUD_LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    try:
        async with Bus(url, connection_name="overhead bench") as bus:
            await declare_platform(bus)
            await asyncio.sleep(3)  # the agent declares its command queue
            for index in range(REPLICAS):
                command = StartReplica(
                    node=NODE,
                    epoch=1,
                    replica_id=f"idle-{index}",
                    namespace="bench",
                    app="idle",
                    image="local",
                    command=(sys.executable, "-c", "import time; time.sleep(3600)"),
                    reservation=Resources(cpu_millicores=500, memory_mib=64),
                    token="-",
                )
                await bus.publish(command)
            deadline = time.monotonic() + 30
            while len(list((state / "replicas").glob("*.json"))) < REPLICAS:
                if time.monotonic() > deadline:
                    raise SystemExit("the agent did not start the replicas within 30 s")
                await asyncio.sleep(0.1)
        measured = psutil.Process(agent.pid)
        await asyncio.sleep(5)  # settle: imports done, first heartbeats sent
        before, started = measured.cpu_times(), time.monotonic()
        await asyncio.sleep(seconds)
        after, elapsed = measured.cpu_times(), time.monotonic() - started
        rss_mib = measured.memory_info().rss / 2**20
    finally:
        agent.send_signal(signal.SIGTERM)
        await agent.wait()
        for record in (state / "replicas").glob("*.json"):
            os.killpg(json.loads(record.read_text())["pid"], signal.SIGKILL)
    cpu_s = (after.user + after.system) - (before.user + before.system)
    print(f"window_s: {elapsed:.0f}, replicas: {REPLICAS}, heartbeat every 1 s")
    print(f"agent_rss_mib: {rss_mib:.1f}")
    print(f"agent_cpu_percent: {cpu_s / elapsed * 100:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window")
    arguments = parser.parse_args()
    with scratch_vhost("bench") as broker:
        asyncio.run(main(broker.url, arguments.seconds))
