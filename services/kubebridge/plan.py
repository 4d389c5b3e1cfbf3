"""The Kubernetes bridge's core: from what the bus says of each PC and what the API server
says of its node, the few calls that make Kubernetes agree. Pure: no I/O.

Theory of operation
-------------------
Each PC has an **intent** made of two facts from the bus: whether a person is there (its
presence, kept fresh by every heartbeat, so a missed event heals within a second) and
whether an admin cordoned or drained it (the journal). A person, or a drain, means the
matching Kubernetes node must be unschedulable *and* empty of the managed namespaces'
pods; a cordon means unschedulable only; neither means schedulable again. A PC the bus
has never described has no intent, and its node is left alone.

Each pass compares every mapped node with its PC's intent:

* wanted unschedulable and schedulable: **cordon** it, recording in an annotation that
  idlecloud did (``idlecloud.org/cordoned``);
* wanted schedulable and unschedulable: **uncordon** it, but only if the annotation says
  idlecloud cordoned it: a node an operator cordoned stays cordoned;
* wanted empty: **evict** each pod of a managed namespace on it that is not already going
  (terminating, finished) and not a DaemonSet's (its controller would put it straight back,
  as ``kubectl drain`` knows). Evictions go through the Eviction API, so the cluster's
  PodDisruptionBudgets decide; a refused eviction (429) is simply planned again next pass.

Nodes that map to no PC, and pods of other namespaces, never appear in a plan. The shell
runs a pass on every change it hears of, at least every ``resync_s``, and again as soon as
the API server answers after an outage: the plan is a function of the present, not of the
events that led to it, so nothing missed while the API server was away is lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "CORDON_ANNOTATION",
    "Calls",
    "Intent",
    "KubeNode",
    "KubePod",
    "intent",
    "plan",
]

#: Set on a node idlecloud cordoned (its value says why); only such nodes are uncordoned.
CORDON_ANNOTATION = "idlecloud.org/cordoned"


@dataclass(frozen=True, slots=True)
class Intent:
    """What a PC's node should be: unschedulable, emptied of managed pods, and why."""

    unschedulable: bool
    empty: bool
    why: str


@dataclass(frozen=True, slots=True)
class KubeNode:
    """A Kubernetes node as the bridge needs it: its name, the PC it is, and whether it is
    unschedulable and cordoned by idlecloud."""

    name: str
    bus_node: str
    unschedulable: bool
    ours: bool


@dataclass(frozen=True, slots=True)
class KubePod:
    """A pod on a node: enough to decide whether to evict it."""

    namespace: str
    name: str
    node: str
    terminating: bool = False
    finished: bool = False
    daemon_set: bool = False


@dataclass
class Calls:
    """The calls one pass makes."""

    cordon: list[tuple[str, str]] = field(default_factory=list)  # (node, why)
    uncordon: list[str] = field(default_factory=list)
    evict: list[KubePod] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.cordon or self.uncordon or self.evict)


def intent(busy: bool, admin: str | None, cause: str = "") -> Intent:
    """A PC's intent from its presence and an admin's ``cordon`` or ``drain`` (or None)."""
    if busy:
        return Intent(True, True, f"a person is at the PC ({cause or 'presence'})")
    if admin == "drain":
        return Intent(True, True, "an admin drained the PC")
    if admin == "cordon":
        return Intent(True, False, "an admin cordoned the PC")
    return Intent(False, False, "the PC is free")


def _evictable(pod: KubePod, namespaces: frozenset[str]) -> bool:
    return (
        pod.namespace in namespaces and not pod.terminating and not pod.finished
        and not pod.daemon_set
    )  # fmt: skip


def plan(
    intents: Mapping[str, Intent],
    nodes: Iterable[KubeNode],
    pods: Mapping[str, Iterable[KubePod]],
    namespaces: frozenset[str],
) -> Calls:
    """The calls that bring ``nodes`` (and the ``pods`` on each, by node name) in line with
    the PCs' ``intents``, touching only pods of ``namespaces``."""
    calls = Calls()
    for node in sorted(nodes, key=lambda n: n.name):
        wanted = intents.get(node.bus_node)
        if wanted is None:
            continue  # the bus knows nothing of this PC: leave its node alone
        if wanted.unschedulable and not node.unschedulable:
            calls.cordon.append((node.name, wanted.why))
        elif not wanted.unschedulable and node.unschedulable and node.ours:
            calls.uncordon.append(node.name)
        if wanted.empty:
            calls.evict.extend(p for p in pods.get(node.name, ()) if _evictable(p, namespaces))
    return calls
