"""How fast the pure scheduling core places replicas: 10,000 replicas on 1,000 PCs.

No services are needed: the core takes a snapshot and returns a plan. 1,000 PCs of mixed
sizes (4, 8 or 16 cores; some labelled), 100 apps of 100 replicas from 10 namespaces with
mixed reservations, a few of them with a node selector. Prints the time, the placements,
and last `placements_per_s: X` (goal: >= 5,000; Nomad's C1M reached about 3,750/s).

Usage: python bench/placement_core.py [--nodes 1000] [--replicas 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas import ZERO, Amount
from services.placement.scheduler import NodeSlot, Snapshot, Want, schedule


def snapshot(nodes: int, replicas: int, seed: int) -> Snapshot:
    rng = random.Random(seed)
    slots = []
    for index in range(nodes):
        cores = rng.choice((4, 8, 16))
        labels = {"room": f"lab{index % 5}"}
        size = Amount(cores * 1000, cores * 2048)
        slots.append(NodeSlot(f"pc{index}", size, size, labels))
    apps = 100
    wants = []
    for index in range(apps):
        selector = {"room": f"lab{index % 5}"} if index % 10 == 0 else {}
        cpu, memory = rng.choice((250, 500, 1000)), rng.choice((256, 512, 1024))
        key = (f"ns{index % 10}", f"app{index}")
        wants.append(Want(key, replicas // apps, Amount(cpu, memory), selector))
    return Snapshot(slots, wants, total=sum((s.capacity for s in slots), ZERO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3, help="best of N runs")
    arguments = parser.parse_args()
    best = float("inf")
    placed = 0
    for run in range(arguments.runs):
        problem = snapshot(arguments.nodes, arguments.replicas, seed=run)
        started = time.perf_counter()
        plan = schedule(problem)
        elapsed = time.perf_counter() - started
        placed = len(plan.placements)
        best = min(best, elapsed / max(1, placed))
        print(f"run {run}: {placed} placed, {len(plan.unplaced)} apps short, {elapsed:.3f} s")
    print(f"nodes: {arguments.nodes}, replicas wanted: {arguments.replicas}")
    print(f"placements_per_s: {1 / best:.0f}")


if __name__ == "__main__":
    main()
