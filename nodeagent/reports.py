"""What an agent tells the platform about its PC: heartbeats and metric samples (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from nodeagent.runtime.spec import ReplicaInfo
from schemas import (
    MAX_CPU_MILLICORES,
    MetricSample,
    NodeHeartbeat,
    Presence,
    ReplicaReport,
    ReplicaUsage,
    Resources,
)

__all__ = ["heartbeat", "metric_sample", "total"]


def total(amounts: Sequence[Resources]) -> Resources:
    """The sum of some amounts of CPU and memory."""
    return Resources(
        cpu_millicores=min(MAX_CPU_MILLICORES, sum(a.cpu_millicores for a in amounts)),
        memory_mib=sum(a.memory_mib for a in amounts),
    )


def heartbeat(
    node: str,
    seq: int,
    capacity: Resources,
    allocatable: Resources,
    presence: Presence,
    replicas: Sequence[ReplicaInfo],
    labels: dict[str, str],
    runtime: str,
) -> NodeHeartbeat:
    """A heartbeat: the PC, its presence, and every replica with its state and use."""
    return NodeHeartbeat(
        node=node, seq=seq, sent_at=datetime.now(UTC), capacity=capacity,
        allocatable=allocatable, usage=total([r.usage for r in replicas]), presence=presence,
        replicas=tuple(
            ReplicaReport(replica_id=r.replica_id, namespace=r.namespace, app=r.app,
                          state=r.state, reservation=r.reservation, usage=r.usage)
            for r in replicas
        ),
        labels=labels, runtime=runtime,
    )  # fmt: skip


def metric_sample(
    node: str,
    used: Resources,
    capacity: Resources,
    presence: Presence,
    replicas: Sequence[ReplicaInfo],
    departed: Iterable[str] = (),
) -> MetricSample:
    """A metric sample: the PC's use, what its live replicas reserve, each one's use, and
    the namespaces whose last replica here went since the previous sample."""
    return MetricSample(
        node=node, at=datetime.now(UTC), cpu_millicores=used.cpu_millicores,
        memory_mib=used.memory_mib, capacity=capacity,
        reserved=total([r.reservation for r in replicas]), presence=presence.state,
        replicas=tuple(
            ReplicaUsage(replica_id=r.replica_id, namespace=r.namespace, app=r.app,
                         cpu_millicores=r.usage.cpu_millicores, memory_mib=r.usage.memory_mib)
            for r in replicas
        ),
        departed=tuple(sorted(departed)),
    )  # fmt: skip
