"""One control plane and thousands of PCs: heartbeat lag, its cost, and placements/s.

For each N, a fresh vhost on the RabbitMQ the tests use gets the control plane the tests
use (``tests.control_plane``: the quota manager, placement with its production settings
and replica tokens, and the auth service that mints them), in this process, and N
synthetic PCs (``bench/scale_pcs.py``: each with its door and quorum command queue, as an
agent has, heartbeating once a second) in a child process. Over ``--seconds`` it samples
every second: the placement's heartbeat lag (sent → taken in; both clocks are this
machine's), this process's CPU and memory (the control plane's, with this loop's own
sampling, a few ms a second), the depth of the placement's event queue (management API),
and how many PCs the registry holds lost (must stay 0). Then one deploy of ``--place``
replicas of 0.1 CPU and 128 MiB: from sending the request to the broker confirming the last
StartReplica (each with its own token), the placements per second end to end.

All three (broker, PCs, control plane) share this machine's 2 cores, so the figures are a
floor: on a site the broker and the PCs are elsewhere.

Usage: python bench/scale.py [--pcs 1000 3000 5000] [--seconds 20] [--place 5000]
Prints per N the lag p50/p99/max, CPU share and RSS, the queue depth's max, lost PCs, and
``placements_per_s: X`` (goals: lag p99 <= 1 s at 5,000 PCs with the control plane under
one core; >= 5,000 placements/s at 1,000 PCs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.figures import summary  # noqa: E402
from bench.scale_pcs import spawn  # noqa: E402
from idlecloud.dev.services import DevServiceError, ensure_rabbitmq, management, rabbitmqctl  # noqa: E402
from services.placement.service import Placement, PlacementSettings  # noqa: E402
from tests.control_plane import Plane, control_plane  # noqa: E402
from tests.helpers import wait_until  # noqa: E402

_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") / 1024
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def rss_mib() -> float:
    """This process's resident memory now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_KIB / 1024


def cpu_s(pid: int | str = "self") -> float:
    """A process's CPU seconds so far (user and system)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def broker_pid() -> int:
    """The local RabbitMQ node's Erlang VM."""
    found = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True)
    return int(found.stdout.split()[0])


def queue_depth(vhost: str, queue: str) -> int:
    """Messages ready and unacked in one queue (management API)."""
    info = management("GET", f"queues/{quote(vhost, safe='')}/{quote(queue, safe='')}")
    assert isinstance(info, dict)
    return int(info.get("messages", 0))


def placement_of(plane: Plane) -> Placement:
    return next(service for service in plane.services if isinstance(service, Placement))


async def steady(plane: Plane, vhost: str, count: int, seconds: int) -> float:
    """Sample the control plane under N PCs beating once a second; print the figures and
    return its CPU share."""
    placement = placement_of(plane)
    events = placement.events_queue
    registry = placement.registry
    await wait_until(lambda: len(registry.nodes) == count, 60, f"{count} PCs heard")
    await asyncio.sleep(6)  # warm: every PC has beaten a few times, once whole at least
    placement.heartbeat_lags_s.clear()
    broker = broker_pid()
    own_s, broker_s, wall_s = cpu_s(), cpu_s(broker), time.monotonic()
    depths, lost, rss = [], 0, []
    for _ in range(seconds):
        await asyncio.sleep(1)
        depths.append(await asyncio.to_thread(queue_depth, vhost, events))
        now = placement._clock()
        lost = max(lost, sum(1 for node in registry.nodes.values() if registry.lost(node, now)))
        rss.append(rss_mib())
    wall_s = time.monotonic() - wall_s
    share, broker_share = (cpu_s() - own_s) / wall_s, (cpu_s(broker) - broker_s) / wall_s
    lags_ms = [lag * 1000 for lag in placement.heartbeat_lags_s]
    print(f"pcs: {count}, seconds: {seconds}, beats taken: {len(lags_ms)} "
          f"({len(lags_ms) / seconds:.0f}/s)")  # fmt: skip
    print("\n".join(summary("heartbeat_lag", lags_ms)))
    print(f"control_plane_cpu_share: {share:.2f} (of one core); broker's: {broker_share:.2f}")
    print(f"control_plane_rss_mib: {max(rss):.0f}")
    print(f"events_queue_depth: max {max(depths)}, by second {depths}")
    print(f"pcs_wrongly_lost: {lost}")
    print(f"control_plane_us_per_pc_second: {share / count * 1e6:.0f}")
    return share


async def deploy(plane: Plane, app: str, replicas: int) -> float:
    """Deploy ``replicas`` of ``app``; the seconds from the request to the last
    StartReplica confirmed, with what it cost the broker and the control plane."""
    placement = placement_of(plane)
    before = placement.starts_confirmed
    broker = broker_pid()
    broker_s, own_s = cpu_s(broker), cpu_s()
    started = time.perf_counter()
    deployed = await plane.deploy("scale", app, replicas, cpu_millicores=100)
    admitted_s = time.perf_counter() - started
    assert deployed.accepted, deployed.reason
    while placement.starts_confirmed - before < replicas:  # noqa: ASYNC110 - a counter, 1 ms
        await asyncio.sleep(0.001)
    elapsed_s = time.perf_counter() - started
    broker_s, own_s = cpu_s(broker) - broker_s, cpu_s() - own_s
    print(f"{app}: {replicas} replicas admitted in {admitted_s * 1000:.0f} ms, the last "
          f"StartReplica confirmed after {elapsed_s * 1000:.0f} ms ({replicas / elapsed_s:.0f}/s); "
          f"CPU meanwhile: broker {broker_s:.2f} s, control plane {own_s:.2f} s "
          f"({broker_s / replicas * 1e3:.3f} and {own_s / replicas * 1e3:.3f} ms)")  # fmt: skip
    return elapsed_s


async def place(plane: Plane, pcs: int, replicas: int) -> None:
    """A first deploy of one replica a PC (one start a message), then the measured one."""
    await plane.quota("scale", (pcs + replicas) * 100, (pcs + replicas) * 128)
    await deploy(plane, "first", pcs)
    await asyncio.sleep(2)  # the PCs report their replicas
    elapsed_s = await deploy(plane, "many", replicas)
    print(f"placements_per_s: {replicas / elapsed_s:.0f}")


async def one_size(count: int, seconds: int, replicas: int, full_every: list[int]) -> None:
    """Each way of beating in turn (the same PCs, a new process each), then placement."""
    work = Path(tempfile.mkdtemp(prefix="scale-"))
    vhosts: list[str] = []
    try:
        async with control_plane(work, (), settings=PlacementSettings(), token_s=600) as plane:
            vhosts.append(plane.url.rsplit("/", 1)[1])
            shares = {}
            for index, every in enumerate(full_every):
                print(f"-- {count} PCs, a whole heartbeat every {every} s, signs of life between")
                pcs = await spawn(plane.url, count, every)
                try:
                    shares[every] = await steady(plane, vhosts[0], count, seconds)
                    if replicas and index == len(full_every) - 1:
                        await place(plane, count, replicas)
                finally:
                    pcs.terminate()
                    out, _ = await pcs.communicate()
                    print(f"synthetic_pcs: {out.decode().strip()}")
            if 1 in shares and len(shares) > 1:
                print("control_plane_cpu_vs_every_heartbeat_whole: " + ", ".join(
                    f"every {every} s {share / shares[1]:.2f}" for every, share in shares.items()
                ))  # fmt: skip
    except TimeoutError:  # deleting thousands of quorum queues outlasts the API's 30 s
        await asyncio.to_thread(finish_deleting, vhosts[0])


def finish_deleting(vhost: str) -> None:
    """Delete ``vhost`` with no HTTP timeout: a deletion the management API gave up on
    may stop half done (505 of 5,000 quorum queues left, once)."""
    with contextlib.suppress(DevServiceError):  # gone already
        rabbitmqctl("delete_vhost", vhost, timeout_s=900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pcs", type=int, nargs="+", default=[1000, 3000, 5000])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--place", type=int, default=5000, help="replicas (0: no placement)")
    parser.add_argument(
        "--full-every", type=int, nargs="+", default=[1, 5],
        help="whole heartbeats every N s (1: the baseline, every beat whole)",
    )  # fmt: skip
    arguments = parser.parse_args()
    ensure_rabbitmq()
    for count in arguments.pcs:
        asyncio.run(one_size(count, arguments.seconds, arguments.place, arguments.full_every))


if __name__ == "__main__":
    main()
