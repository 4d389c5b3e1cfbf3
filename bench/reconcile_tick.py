"""How long one reconcile tick takes as a campus grows (the pure core, no services).

The placement leader runs a tick every ``tick_s`` on its event loop, so a tick's length is
how long every other message waits. This builds the registry a placement leader would
hold at steady state: N PCs (4 cores, 8 GiB; their heartbeats taken as the registry takes
them), each running K replicas of 100 apps from 10 namespaces, every app at its desired
count, and times ``Reconciler.reconcile`` (best of ``--runs``). A second tick is timed
with one PC in ten busy (a class came in), so its replicas are displaced and replacements
are wanted.

Usage: python bench/reconcile_tick.py [--pcs 1000 3000 5000] [--replicas 1 4] [--runs 5]
Prints per size the tick's milliseconds, microseconds per replica (flat: linear), and its
longest slice: the tick is taken in slices (``Reconciler.steps``), between which the
leader's loop takes its events, so the longest slice is the longest the loop waits.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas import Amount, DeployRequest, PresenceState, ReplicaState
from services.placement.reconciler import Reconciler, replica_id
from services.placement.registry import KnownReplica, NodeInfo, Registry
from services.placement.scheduler import finish
from services.state import DesiredState, Spec

APPS = 100
PC = Amount(4000, 8192)


def world(pcs: int, per_pc: int) -> tuple[DesiredState, Registry]:
    """The steady state: every app at its count, spread over every PC."""
    desired = DesiredState()
    specs = []
    for index in range(APPS):
        namespace, app = f"ns{index % 10}", f"app{index}"
        request = DeployRequest(request_id=f"deploy{index:08d}", namespace=namespace, app=app,
                                image="local", replicas=pcs * per_pc // APPS,
                                cpu_millicores=500, memory_mib=256)  # fmt: skip
        specs.append(Spec(request, request.replicas, generation=index))
        desired.deployments[(namespace, app)] = specs[-1]
    registry = Registry()
    suffixes = (f"{n:08x}" for n in itertools.count())
    apps = itertools.cycle(specs)
    for index in range(pcs):
        replicas = {}
        for _ in range(per_pc):
            spec = next(apps)
            rid = replica_id(spec.request.app, spec.generation, next(suffixes))
            replicas[rid] = KnownReplica(rid, spec.request.namespace, spec.request.app,
                                         ReplicaState.RUNNING, spec.reservation)  # fmt: skip
        registry.nodes[f"pc{index}"] = NodeInfo(
            f"pc{index}", PC, PC, PC * 0, PresenceState.IDLE, "idle", last_seen=0.0, seq=1,
            replicas=replicas,
        )  # fmt: skip
    return desired, registry


def best_tick_s(desired: DesiredState, registry: Registry, runs: int) -> tuple[float, float, int]:
    """The fastest of ``runs`` ticks by fresh reconcilers, taken in slices as the
    placement leader takes them: the whole tick's time, the longest slice of the fastest
    tick (what the leader's loop waits at most), and what the last tick planned."""
    best, longest, planned = float("inf"), 0.0, 0
    for _ in range(runs):
        suffixes = (f"{n:08x}" for n in itertools.count(10**8))
        reconciler = Reconciler(suffixes=functools.partial(next, suffixes))
        marks = [time.perf_counter()]
        plan = finish(reconciler.steps(desired, registry, now=1.0),
                      lambda marks=marks: marks.append(time.perf_counter()))  # fmt: skip
        marks.append(time.perf_counter())
        slices = [later - earlier for earlier, later in itertools.pairwise(marks)]
        if sum(slices) < best:
            best, longest = sum(slices), max(slices)
        planned = len(plan.starts) + len(plan.stops)
    return best, longest, planned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pcs", type=int, nargs="+", default=[1000, 3000, 5000])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=5)
    arguments = parser.parse_args()
    print(f"best of {arguments.runs} ticks; {APPS} apps at their desired counts")
    for per_pc in arguments.replicas:
        for pcs in arguments.pcs:
            desired, registry = world(pcs, per_pc)
            steady_s, steady_slice_s, _ = best_tick_s(desired, registry, arguments.runs)
            for node in list(registry.nodes.values())[::10]:  # a class comes into one PC in ten
                node.presence = PresenceState.BUSY
                for replica in node.replicas.values():
                    replica.state = ReplicaState.PAUSED
            busy_s, busy_slice_s, planned = best_tick_s(desired, registry, arguments.runs)
            replicas = pcs * per_pc
            print(f"pcs {pcs} x {per_pc} replicas: steady tick {steady_s * 1000:.1f} ms "
                  f"({steady_s / replicas * 1e6:.2f} us per replica, longest slice "
                  f"{steady_slice_s * 1000:.1f} ms); one PC in ten busy {busy_s * 1000:.1f} ms "
                  f"({busy_s / replicas * 1e6:.2f} us per replica, longest slice "
                  f"{busy_slice_s * 1000:.1f} ms, {planned} commands)")  # fmt: skip


if __name__ == "__main__":
    main()
