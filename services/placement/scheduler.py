"""The scheduling core: a snapshot in, a plan out (pure: no I/O, no clock, no async).

Theory of operation
-------------------
The reconciler hands over a :class:`Snapshot`: the PCs that may take work now (live, idle,
not cordoned) with their free resources and how many replicas of each app they hold, the
replicas still wanted per app, and each namespace's running reservation, quota and the
cluster's total capacity. :func:`schedule` returns a :class:`Plan`: one node per replica
it could place, and a reason for every app with replicas it could not.

Order, when capacity is short, is dominant resource fairness: the next replica placed
always belongs to the namespace whose dominant share (the larger of its CPU and memory
fractions of the cluster) is smallest, so namespaces converge to equal dominant shares.
Within a namespace its apps take turns.

Each replica's node is chosen as in Nomad: feasibility filters (:data:`FILTERS`, each a
small function returning why a node cannot take the replica, or None) then scorers
(:data:`SCORERS`, each a small function; higher is better), composed into one pass. Not
every node is examined: nodes are visited from a rotating start, and the best of the
first ``candidates`` feasible ones wins (Nomad's limit iterator: the best of a few random
choices is nearly as good as the best of all, at a fraction of the cost). The scorers
spread an app's replicas across PCs in proportion to their size first and prefer the
least allocated PC second.

:func:`preemption` is the bounded fair-share step: when a namespace below its fair share
cannot place a replica and another is above its own, it names one replica of the
latter to stop (the reconciler stops at most one per interval).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "FILTERS",
    "SCORERS",
    "NodeSlot",
    "Plan",
    "Snapshot",
    "Want",
    "dominant_share",
    "preemption",
    "schedule",
]

AppKey = tuple[str, str]  # (namespace, app)


@dataclass(slots=True)
class NodeSlot:
    """A PC that may take work: what it has free, its labels, and who runs there."""

    name: str
    free_cpu_millicores: int
    free_memory_mib: int
    capacity_cpu_millicores: int
    capacity_memory_mib: int
    labels: Mapping[str, str] = field(default_factory=dict)
    apps: dict[AppKey, int] = field(default_factory=dict)  # replicas of each app here


@dataclass(frozen=True, slots=True)
class Want:
    """Replicas of one app still to place, and what each needs."""

    key: AppKey
    count: int
    cpu_millicores: int
    memory_mib: int
    selector: Mapping[str, str] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        """The namespace the app belongs to."""
        return self.key[0]


@dataclass(slots=True)
class Snapshot:
    """Everything the scheduler may look at."""

    nodes: list[NodeSlot]
    wants: list[Want]
    usage: dict[str, tuple[int, int]] = field(default_factory=dict)  # ns -> running reservation
    quotas: dict[str, tuple[int, int]] = field(default_factory=dict)  # ns -> quota
    total: tuple[int, int] = (0, 0)  # the cluster's capacity, for dominant shares


@dataclass(slots=True)
class Plan:
    """Where each placed replica goes, and why the others could not be placed."""

    placements: list[tuple[AppKey, str]] = field(default_factory=list)
    unplaced: dict[AppKey, str] = field(default_factory=dict)


Filter = Callable[[NodeSlot, Want], str | None]
Scorer = Callable[[NodeSlot, Want], float]


def fits_cpu(node: NodeSlot, want: Want) -> str | None:
    """The node has the replica's CPU free."""
    return None if node.free_cpu_millicores >= want.cpu_millicores else "not enough free CPU"


def fits_memory(node: NodeSlot, want: Want) -> str | None:
    """The node has the replica's memory free."""
    return None if node.free_memory_mib >= want.memory_mib else "not enough free memory"


def matches_selector(node: NodeSlot, want: Want) -> str | None:
    """The node carries every label the app's node selector asks for."""
    for key, value in want.selector.items():
        if node.labels.get(key) != value:
            return f"no PC labelled {key}={value}"
    return None


def spread(node: NodeSlot, want: Want) -> float:
    """A smaller share of the PC's CPU held by this app is better: an app spreads over PCs
    in proportion to their size, so a person sitting down at one stops few of its replicas."""
    return -node.apps.get(want.key, 0) * want.cpu_millicores / max(1, node.capacity_cpu_millicores)


def least_allocated(node: NodeSlot, _want: Want) -> float:
    """A PC with more of its capacity free is better (between 0 and 1)."""
    cpu = node.free_cpu_millicores / max(1, node.capacity_cpu_millicores)
    memory = node.free_memory_mib / max(1, node.capacity_memory_mib)
    return (cpu + memory) / 2


FILTERS: tuple[Filter, ...] = (fits_cpu, fits_memory, matches_selector)
#: (scorer, weight): spreading dominates, free capacity breaks ties.
SCORERS: tuple[tuple[Scorer, float], ...] = ((spread, 10.0), (least_allocated, 1.0))


def dominant_share(usage: tuple[int, int], total: tuple[int, int]) -> float:
    """The larger of a namespace's CPU and memory fractions of the cluster."""
    return max(usage[0] / max(1, total[0]), usage[1] / max(1, total[1]))


class _Picker:
    """Finds a node for a replica: filters, then the best-scored of a few feasible nodes."""

    def __init__(self, nodes: list[NodeSlot], candidates: int) -> None:
        self.nodes = nodes
        self.candidates = candidates
        self.cursor = 0

    def pick(self, want: Want) -> NodeSlot | str:
        best: NodeSlot | None = None
        best_score = -math.inf
        found = 0
        reasons: dict[str, int] = {}
        count = len(self.nodes)
        for step in range(count):
            node = self.nodes[(self.cursor + step) % count]
            reason = next((r for check in FILTERS if (r := check(node, want)) is not None), None)
            if reason is not None:
                reasons[reason] = reasons.get(reason, 0) + 1
                continue
            score = sum(weight * scorer(node, want) for scorer, weight in SCORERS)
            if score > best_score:
                best, best_score = node, score
            found += 1
            if found >= self.candidates:
                break
        self.cursor = (self.cursor + 1) % max(1, count)
        if best is None:
            if not reasons:
                return "no PC is free to take work"
            summary = ", ".join(f"{n} x {r}" for r, n in sorted(reasons.items()))
            return f"no PC can take a replica ({summary})"
        return best


def schedule(snapshot: Snapshot, *, candidates: int | None = None) -> Plan:
    """Place as many wanted replicas as fit, fairly between namespaces; see the header.

    ``candidates`` is how many feasible nodes are scored per replica (default: the larger
    of 4 and log2 of the node count).
    """
    plan = Plan()
    limit = candidates or max(4, math.ceil(math.log2(max(2, len(snapshot.nodes)))))
    picker = _Picker(snapshot.nodes, limit)
    usage = dict(snapshot.usage)
    queues: dict[str, deque[tuple[int, Want]]] = {}
    for want in snapshot.wants:
        if want.count > 0:
            queues.setdefault(want.namespace, deque()).append((want.count, want))
    while queues:
        namespace = min(
            queues, key=lambda ns: (dominant_share(usage.get(ns, (0, 0)), snapshot.total), ns)
        )
        turns = queues[namespace]
        left, want = turns[0]
        used = usage.get(namespace, (0, 0))
        quota = snapshot.quotas.get(namespace)
        choice: NodeSlot | str
        if quota is not None and (
            used[0] + want.cpu_millicores > quota[0] or used[1] + want.memory_mib > quota[1]
        ):
            choice = f"{namespace} runs its whole quota already"
        else:
            choice = picker.pick(want)
        if isinstance(choice, str):
            plan.unplaced[want.key] = choice
            turns.popleft()
        else:
            choice.free_cpu_millicores -= want.cpu_millicores
            choice.free_memory_mib -= want.memory_mib
            choice.apps[want.key] = choice.apps.get(want.key, 0) + 1
            usage[namespace] = (used[0] + want.cpu_millicores, used[1] + want.memory_mib)
            plan.placements.append((want.key, choice.name))
            turns.popleft()
            if left > 1:
                turns.append((left - 1, want))  # its other apps take the next turns
        if not turns:
            del queues[namespace]
    return plan


def preemption(
    snapshot: Snapshot,
    plan: Plan,
    running: Mapping[AppKey, list[tuple[str, str]]],
    sizes: Mapping[AppKey, tuple[int, int]],
) -> tuple[str, str] | None:
    """One replica (replica id, node) to stop so a starved namespace gets its fair share.

    Call it with the snapshot :func:`schedule` planned on (its nodes' free resources then
    include the plan). A namespace is starved when the plan left some of its replicas
    unplaced while its dominant share is below the fair share (an equal split between
    the namespaces that want capacity). The victim is a replica of the namespace furthest
    above the fair share, newest first, on a PC where the starved replica fits once it is
    gone: stopping it must help. ``running`` lists each app's running replicas, oldest
    first; ``sizes`` each app's reservation per replica.
    """
    demanding = {key[0] for key in plan.unplaced} | {key[0] for key in running if running[key]}
    if not plan.unplaced:
        return None
    fair = 1.0 / len(demanding)
    shares = {
        ns: dominant_share(snapshot.usage.get(ns, (0, 0)), snapshot.total) for ns in demanding
    }
    starved = [
        want
        for want in snapshot.wants
        if want.key in plan.unplaced and shares[want.namespace] < fair
    ]
    over = sorted((ns for ns in demanding if shares[ns] > fair), key=lambda ns: -shares[ns])
    nodes = {node.name: node for node in snapshot.nodes}
    for victim_ns in over:
        for key in sorted(k for k in running if k[0] == victim_ns):
            cpu, memory = sizes[key]
            for replica_id, node_name in reversed(running[key]):
                node = nodes.get(node_name)
                if node is None:
                    continue
                freed = NodeSlot(
                    node.name, node.free_cpu_millicores + cpu, node.free_memory_mib + memory,
                    node.capacity_cpu_millicores, node.capacity_memory_mib, node.labels,
                )  # fmt: skip
                if any(all(check(freed, want) is None for check in FILTERS) for want in starved):
                    return replica_id, node_name
    return None
