"""Where replicas' control groups go, and how the groups above them weigh.

A replica's own group (:class:`~nodeagent.runtime.cgroup.Cgroup`) sits under groups the
agent owns (``idlecloud/<node>``, ``idlecloud-docker``) or nests in the agent's systemd
unit (:func:`replica_parent`). Those levels must not let a replica at the lowest weight
take its parent's normal share from the person's processes (:class:`WeightChain`), and a
check for leftovers looks at every group below them (:func:`replica_groups`).

Under systemd the agent's unit has ``Delegate=yes``: its own subtree is the agent's to
manage, and :func:`replica_parent` nests replicas' groups inside it (``<unit>/replicas``)
instead of writing outside it. On v2 a group with children may hold no process, so the
agent first moves itself into a leaf of its own (``<unit>/agent``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nodeagent.runtime.cgroup import RT_REPLICA_SHARE, Cgroup, Mounts

__all__ = [
    "ReplicaParent",
    "WeightChain",
    "own_groups",
    "remove_everywhere",
    "replica_groups",
    "replica_parent",
]

#: The real-time budgets of the agent's own groups while raised, where the kernel budgets
#: it per group: the top one's (of the 95 % a machine gives), and each one's below it, so
#: three tops fit, three PCs' groups raised at once in a top, ten replicas' wakes in each.
_RT_TOP_SHARE, _RT_NODE_SHARE = 0.3, 10 * RT_REPLICA_SHARE


def own_groups(relative: str) -> list[str]:
    """``relative`` and each group above it that is the agent's own, deepest first: every
    one below the first systemd unit, slice or scope (those are systemd's to weigh)."""
    parts = Path(relative).parts
    owned = []
    for depth in range(len(parts), 0, -1):
        if parts[depth - 1].endswith((".service", ".slice", ".scope")):
            break
        owned.append("/".join(parts[:depth]))
    return owned


class WeightChain:
    """The agent's own groups above a PC's replicas, at the lowest CPU weight.

    A group's weight counts only among its siblings: a replica's group at the lowest weight
    inside a parent of normal weight would take its parent's whole share from the person's
    processes. So every level the agent owns is at the lowest weight too. A replica that
    must run once, to freeze or to die of SIGKILL, would then wait for seconds on a busy PC:
    :meth:`raised` gives the chain a normal weight for as long as any replica must run, and
    the real-time budgets a freeze's wake needs where the kernel budgets it per group.
    """

    def __init__(self, groups: Iterable[Cgroup]) -> None:
        self._groups = tuple(groups)
        self._raised = 0
        self._weigh(lowest=True)

    @contextlib.contextmanager
    def raised(self) -> Iterator[None]:
        """A normal weight while the block runs (and any other block raising it)."""
        self._raised += 1
        if self._raised == 1:
            self._weigh(lowest=False)
        try:
            yield
        finally:
            self._raised -= 1
            if self._raised == 0:
                self._weigh(lowest=True)

    def _weigh(self, *, lowest: bool) -> None:
        # real-time budgets for replicas' wakes, given top down and taken back bottom up (a
        # group shared with another agent's chain keeps its budget while that one needs it)
        order = self._groups if lowest else tuple(reversed(self._groups))
        for group in order:
            with contextlib.suppress(OSError):  # not writable: nothing to keep low
                group.weigh(lowest=lowest)
            top = group is self._groups[-1]
            group.budget_realtime(0 if lowest else _RT_TOP_SHARE if top else _RT_NODE_SHARE)


@dataclass(frozen=True, slots=True)
class ReplicaParent:
    """Where replicas' groups go, and the leaf the agent must move into first (v2, when
    it nests them inside its own delegated group), if any."""

    path: str
    agent_leaf: str | None = None


def replica_parent(own_cgroups: str, node: str, *, unified: bool) -> ReplicaParent:
    """Where a PC's replicas' groups go, from the agent's own ``/proc/self/cgroup``.

    Inside a systemd unit (its group ends in ``.service``: the unit delegates it) they
    nest in it; elsewhere (a shell, a simulated PC, no systemd) they go under
    ``idlecloud/<node>``.
    """
    own = ""
    for line in own_cgroups.splitlines():
        _, controllers, path = line.split(":", 2)
        if (unified and controllers == "") or (not unified and "cpu" in controllers.split(",")):
            own = path.strip("/")
    if not own.endswith(".service"):
        return ReplicaParent(f"idlecloud/{node}")
    return ReplicaParent(f"{own}/replicas", f"{own}/agent" if unified else None)


def replica_groups(mounts: Mounts, parents: Iterable[str]) -> list[Path]:
    """Every group at or below each of ``parents`` (e.g. ``idlecloud/edge``) in every
    hierarchy we make groups in (each v1 controller's, and v2's), deepest first: what a
    check for leftovers looks at."""
    roots = set(mounts.v1.values()) | ({mounts.v2} if mounts.v2 is not None else set())
    found: set[Path] = set()
    for root in roots:
        for parent in parents:
            top = root / parent
            if top.is_dir():
                found.add(top)
                found.update(path for path in top.rglob("*") if path.is_dir())
    return sorted(found, key=lambda path: (len(path.parts), str(path)), reverse=True)


def remove_everywhere(relative: str, mounts: Mounts) -> None:
    """Remove the empty group ``relative`` from every cgroup hierarchy mounted (Docker
    makes a container's parent group in each, and never removes it); a group that is
    missing, or still holds something, is left."""
    for hierarchy in mounts.hierarchies:
        with contextlib.suppress(OSError):
            (hierarchy / relative).rmdir()
