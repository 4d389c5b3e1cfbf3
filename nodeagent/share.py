"""What a PC in ``coexist`` mode offers while a person uses it, and which replicas go (pure).

A coexisting PC keeps at most ``cpu_fraction`` of its cores and ``memory_fraction`` of its
memory for replicas while someone is at it, and never more than its allocatable: this is
the allocatable its heartbeats report then, so placement sends only what fits. The
replicas already there when the person arrived are kept oldest first; the newest ones
that do not fit are stopped. When memory runs short, the newest replica goes first: it
has done the least work.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from nodeagent.runtime.spec import ENDED, ReplicaInfo
from schemas import ZERO, Amount

__all__ = ["newest", "over_share", "shared_allocatable"]


def shared_allocatable(
    capacity: Amount, allocatable: Amount, cpu_fraction: float, memory_fraction: float
) -> Amount:
    """The allocatable of a PC shared with a person: a fraction of its capacity, within
    its allocatable.

    Raises:
        ValueError: a fraction is not between 0 and 1.
    """
    for name, fraction in (("cpu_fraction", cpu_fraction), ("memory_fraction", memory_fraction)):
        if not 0 <= fraction <= 1:
            raise ValueError(f"{name} must be between 0 and 1, not {fraction}")
    return Amount(
        min(allocatable.cpu_millicores, int(capacity.cpu_millicores * cpu_fraction)),
        min(allocatable.memory_mib, int(capacity.memory_mib * memory_fraction)),
    )


def _oldest_first(
    replicas: Iterable[ReplicaInfo], started_at: Mapping[str, float]
) -> list[ReplicaInfo]:
    """Live replicas, oldest first (one whose start is unknown, adopted, counts as oldest)."""
    live = [r for r in replicas if r.state not in ENDED]
    return sorted(live, key=lambda r: (started_at.get(r.replica_id, -float("inf")), r.replica_id))


def over_share(
    replicas: Iterable[ReplicaInfo], started_at: Mapping[str, float], share: Amount
) -> list[str]:
    """The replicas to stop so that the rest fit ``share``: the oldest are kept first."""
    kept, over = ZERO, []
    for replica in _oldest_first(replicas, started_at):
        if (kept + replica.reservation).shortfall(share) is None:
            kept += replica.reservation
        else:
            over.append(replica.replica_id)
    return over


def newest(replicas: Iterable[ReplicaInfo], started_at: Mapping[str, float]) -> str | None:
    """The live replica started last, if any."""
    live = _oldest_first(replicas, started_at)
    return live[-1].replica_id if live else None
