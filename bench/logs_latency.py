"""How soon a line a replica prints is shown by a follower of its logs (`bus logs -f`).

Starts RabbitMQ with the same helper the tests use, a control plane with one simulated PC
(a real agent, the process runtime) and one replica that prints a line carrying its own
clock every ``--interval`` seconds. A follower (``bus.logs.read_logs(follow=True)``, what
`bus logs -f` runs) takes each line and measures now minus the time printed in it: the
agent's read (every 0.2 s), its publish, the placement leader's check and append to the
namespace's stream, and the stream's delivery. Both clocks are this machine's.

Usage: python bench/logs_latency.py [--lines 300] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import summary
from bus.logs import read_logs
from idlecloud.dev.services import ensure_rabbitmq
from schemas import utc_now
from tests.control_plane import control_plane, thesis_pcs


def _printer(lines: int, interval_s: float) -> tuple[str, ...]:
    code = (f"import time\nfor i in range({lines}):\n"
            f"    print(f'tick {{i}} {{time.time():.6f}}', flush=True)\n"
            f"    time.sleep({interval_s})\ntime.sleep(3600)")  # fmt: skip
    return (sys.executable, "-u", "-c", code)


async def main(lines: int, interval_s: float) -> None:
    with tempfile.TemporaryDirectory() as work:
        pcs = thesis_pcs("-bench")[1:2]
        async with control_plane(Path(work), pcs) as plane:
            await plane.quota("bench", 4000)
            since = utc_now() - timedelta(seconds=5)
            latencies_ms: list[float] = []

            async def follow() -> None:
                async for item in read_logs(plane.bus, "bench", since=since, follow=True):
                    if item is None or not item[1].text.startswith("tick "):
                        continue
                    printed = float(item[1].text.split()[2])
                    latencies_ms.append((time.time() - printed) * 1000)
                    if len(latencies_ms) >= lines:
                        return

            following = asyncio.create_task(follow())
            await asyncio.sleep(1.0)  # the follower waits on the stream
            deployed = await plane.deploy(
                "bench", "printer", 1, command=_printer(lines, interval_s)
            )
            assert deployed.accepted, deployed.reason
            await asyncio.wait_for(following, 60 + lines * interval_s * 2)
    print(
        f"lines: {len(latencies_ms)}, one every {interval_s} s, one replica, the agent "
        "reading every 0.2 s"
    )
    for line in summary("print_to_follower", latencies_ms):
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.05)
    arguments = parser.parse_args()
    ensure_rabbitmq()
    asyncio.run(main(arguments.lines, arguments.interval))
