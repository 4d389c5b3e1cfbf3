"""The scheduling core: a snapshot in, a plan out (pure: no I/O, no clock, no async).

Theory of operation
-------------------
The reconciler hands over a :class:`Snapshot`: the PCs that may take work now (live, idle,
not cordoned) with their free resources and how many replicas of each app they hold, the
replicas still wanted per app, and each namespace's running reservation, quota and the
cluster's total capacity. :func:`schedule` returns a :class:`Schedule`: one node per
replica it could place, a reason for every app with replicas it could not, and the nodes
as the placements leave them (the snapshot itself is not changed).

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
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from schemas import ZERO, Amount
from services.state import AppKey

__all__ = [
    "FILTERS",
    "SCORERS",
    "SLICE_PLACEMENTS",
    "NodeSlot",
    "Schedule",
    "Snapshot",
    "Want",
    "finish",
    "fits",
    "least_allocated",
    "matches_selector",
    "preemption",
    "schedule",
    "scheduling",
    "spread",
]

T = TypeVar("T")
#: :func:`scheduling` pauses after this many placements (about 5 ms here).
SLICE_PLACEMENTS = 250


@dataclass(slots=True)
class NodeSlot:
    """A PC that may take work: what it has free, its labels, and who runs there."""

    name: str
    free: Amount
    capacity: Amount
    labels: Mapping[str, str] = field(default_factory=dict)
    apps: dict[AppKey, int] = field(default_factory=dict)  # replicas of each app here

    def copy(self) -> NodeSlot:
        """A copy to place on, leaving this one as it is."""
        return NodeSlot(self.name, self.free, self.capacity, self.labels, dict(self.apps))


@dataclass(frozen=True, slots=True)
class Want:
    """Replicas of one app still to place, and what each needs."""

    key: AppKey
    count: int
    size: Amount
    selector: Mapping[str, str] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        """The namespace the app belongs to."""
        return self.key[0]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the scheduler may look at."""

    nodes: list[NodeSlot]
    wants: list[Want]
    usage: Mapping[str, Amount] = field(default_factory=dict)  # ns -> running reservation
    quotas: Mapping[str, Amount] = field(default_factory=dict)  # ns -> quota
    total: Amount = ZERO  # the cluster's capacity, for dominant shares


@dataclass(frozen=True, slots=True)
class Schedule:
    """Where each placed replica goes, why the others could not be placed, and the nodes
    as the placements leave them."""

    placements: list[tuple[AppKey, str]] = field(default_factory=list)
    unplaced: dict[AppKey, str] = field(default_factory=dict)
    nodes: list[NodeSlot] = field(default_factory=list)


Filter = Callable[[NodeSlot, Want], str | None]
Scorer = Callable[[NodeSlot, Want], float]


def fits(node: NodeSlot, want: Want) -> str | None:
    """The node has the replica's CPU and memory free."""
    short = want.size.shortfall(node.free)
    return None if short is None else f"not enough free {short}"


def matches_selector(node: NodeSlot, want: Want) -> str | None:
    """The node carries every label the app's node selector asks for."""
    for key, value in want.selector.items():
        if node.labels.get(key) != value:
            return f"no PC labelled {key}={value}"
    return None


def spread(node: NodeSlot, want: Want) -> float:
    """A smaller share of the PC's CPU held by this app is better: an app spreads over PCs
    in proportion to their size, so a person sitting down at one stops few of its replicas."""
    held = node.apps.get(want.key, 0) * want.size.cpu_millicores
    return -held / max(1, node.capacity.cpu_millicores)


def least_allocated(node: NodeSlot, _want: Want) -> float:
    """A PC with more of its capacity free is better (between 0 and 1)."""
    cpu = node.free.cpu_millicores / max(1, node.capacity.cpu_millicores)
    memory = node.free.memory_mib / max(1, node.capacity.memory_mib)
    return (cpu + memory) / 2


FILTERS: tuple[Filter, ...] = (fits, matches_selector)
#: (scorer, weight): spreading dominates, free capacity breaks ties.
SCORERS: tuple[tuple[Scorer, float], ...] = ((spread, 10.0), (least_allocated, 1.0))


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


def schedule(snapshot: Snapshot, *, candidates: int | None = None) -> Schedule:
    """Place as many wanted replicas as fit, fairly between namespaces; see the header.

    ``candidates`` is how many feasible nodes are scored per replica (default: the larger
    of 4 and log2 of the node count).
    """
    return finish(scheduling(snapshot, candidates=candidates))


def finish(steps: Generator[None, None, T], between: Callable[[], object] | None = None) -> T:
    """Take a computation in slices (a generator that pauses by yielding) to its end at
    once, calling ``between`` at each pause; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
        if between is not None:
            between()


def scheduling(
    snapshot: Snapshot, *, candidates: int | None = None
) -> Generator[None, None, Schedule]:
    """:func:`schedule` in slices: it pauses (yields) after every :data:`SLICE_PLACEMENTS`
    placements (it works on its own copies, so nothing it holds changes meanwhile)."""
    if not any(want.count > 0 for want in snapshot.wants):  # nothing to place: nothing to copy
        return Schedule(nodes=list(snapshot.nodes))
    nodes = [node.copy() for node in snapshot.nodes]
    result = Schedule(nodes=nodes)
    limit = candidates or max(4, math.ceil(math.log2(max(2, len(nodes)))))
    picker = _Picker(nodes, limit)
    usage = dict(snapshot.usage)
    queues: dict[str, deque[tuple[int, Want]]] = {}
    for want in snapshot.wants:
        if want.count > 0:
            queues.setdefault(want.namespace, deque()).append((want.count, want))
    while queues:
        namespace = min(queues, key=lambda ns: (usage.get(ns, ZERO).share_of(snapshot.total), ns))
        turns = queues[namespace]
        left, want = turns.popleft()
        used = usage.get(namespace, ZERO)
        quota = snapshot.quotas.get(namespace)
        choice: NodeSlot | str
        if quota is not None and (used + want.size).shortfall(quota) is not None:
            choice = f"{namespace} runs its whole quota already"
        else:
            choice = picker.pick(want)
        if isinstance(choice, str):
            result.unplaced[want.key] = choice
        else:
            choice.free -= want.size
            choice.apps[want.key] = choice.apps.get(want.key, 0) + 1
            usage[namespace] = used + want.size
            result.placements.append((want.key, choice.name))
            if len(result.placements) % SLICE_PLACEMENTS == 0:
                yield
            if left > 1:
                turns.append((left - 1, want))  # its other apps take the next turns
        if not turns:
            del queues[namespace]
    return result


def preemption(
    snapshot: Snapshot,
    planned: Schedule,
    running: Mapping[AppKey, list[tuple[str, str]]],
    sizes: Mapping[AppKey, Amount],
) -> tuple[str, str] | None:
    """One replica (replica id, node) to stop so a starved namespace gets its fair share.

    ``planned`` is what :func:`schedule` made of ``snapshot`` (its nodes' free resources
    include the placements). A namespace is starved when the plan left some of its
    replicas unplaced while its dominant share is below the fair share (an equal split
    between the namespaces that want capacity). The victim is a replica of the namespace
    furthest above the fair share, newest first, on a PC where the starved replica fits
    once it is gone: stopping it must help. ``running`` lists each app's running
    replicas, oldest first; ``sizes`` each app's reservation per replica.
    """
    if not planned.unplaced:
        return None
    demanding = {key[0] for key in planned.unplaced} | {key[0] for key in running if running[key]}
    fair = 1.0 / len(demanding)
    shares = {ns: snapshot.usage.get(ns, ZERO).share_of(snapshot.total) for ns in demanding}
    starved = [
        want
        for want in snapshot.wants
        if want.key in planned.unplaced and shares[want.namespace] < fair
    ]
    over = sorted((ns for ns in demanding if shares[ns] > fair), key=lambda ns: -shares[ns])
    nodes = {node.name: node for node in planned.nodes}
    for victim_ns in over:
        for key in sorted(k for k in running if k[0] == victim_ns):
            for replica_id, node_name in reversed(running[key]):
                node = nodes.get(node_name)
                if node is None:
                    continue
                freed = NodeSlot(node.name, node.free + sizes[key], node.capacity, node.labels)
                if any(all(check(freed, want) is None for check in FILTERS) for want in starved):
                    return replica_id, node_name
    return None
