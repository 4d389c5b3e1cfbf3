"""What an idle agent costs its PC: CPU share of one core and resident memory.

Starts RabbitMQ with the helper the tests use (a scratch vhost) and one real agent
(`bus agent run`, process runtime or `--runtime docker`, heartbeat every second, every
presence source running: utmp sessions, input devices, foreign load) with 4 idle
replicas, lets it settle, then measures the agent process alone over the window.

With `--presence-mode coexist` a person is logged in (a utmp record), so the PC is shared
and the agent reads its fast signals every 50 ms (nodeagent/pressure.py): what a
shared PC costs on top.

Usage: python bench/agent_overhead.py [--seconds 60] [--runtime process|docker]
                                      [--presence-mode suspend|coexist]
Prints `agent_cpu_percent: X` (share of one core; goal <= 0.5) and `agent_rss_mib: Y`
(goal <= 64).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.agent_rig import (  # noqa: E402
    RUNTIMES,
    end_replicas,
    prepare,
    replica_pids,
    start_agent,
    starts,
)
from bus.connection import Bus  # noqa: E402
from bus.topology import declare_platform  # noqa: E402
from idlecloud.dev.services import scratch_vhost  # noqa: E402
from nodeagent.utmp import write_login  # noqa: E402

NODE, REPLICAS = "overhead-pc", 4


async def main(url: str, seconds: float, runtime: str, mode: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="overhead-"))
    if mode == "coexist":
        write_login(work / "utmp", "student", "tty7")
    agent = await start_agent(url, NODE, work, runtime, "--presence-mode", mode)
    try:
        async with Bus(url, connection_name="overhead bench") as bus:
            await declare_platform(bus)
            await asyncio.sleep(3)  # the agent declares its command queue
            for command in starts(NODE, runtime, REPLICAS, busy=False, cpu_millicores=500):
                await bus.publish(command)
            deadline = time.monotonic() + 60
            while len(replica_pids(NODE, work, runtime)) < REPLICAS:
                if time.monotonic() > deadline:
                    raise SystemExit("the agent did not start the replicas within 60 s")
                await asyncio.sleep(0.2)
        measured = psutil.Process(agent.pid)
        await asyncio.sleep(5)  # settle: imports done, first heartbeats sent
        before, started = measured.cpu_times(), time.monotonic()
        await asyncio.sleep(seconds)
        after, elapsed = measured.cpu_times(), time.monotonic() - started
        rss_mib = measured.memory_info().rss / 2**20
    finally:
        agent.send_signal(signal.SIGTERM)
        await agent.wait()
        end_replicas(NODE, work, runtime)
    cpu_s = (after.user + after.system) - (before.user + before.system)
    print(f"window_s: {elapsed:.0f}, replicas: {REPLICAS}, heartbeat every 1 s, {runtime} runtime, "
          f"presence mode {mode}")  # fmt: skip
    print(f"agent_rss_mib: {rss_mib:.1f}")
    print(f"agent_cpu_percent: {cpu_s / elapsed * 100:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window")
    parser.add_argument("--runtime", choices=RUNTIMES, default="process")
    parser.add_argument("--presence-mode", choices=("suspend", "coexist"), default="suspend")
    arguments = parser.parse_args()
    prepare(arguments.runtime)
    with scratch_vhost("bench") as broker:
        asyncio.run(main(broker.url, arguments.seconds, arguments.runtime,
                         arguments.presence_mode))  # fmt: skip
