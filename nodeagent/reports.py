"""What an agent tells the platform about its PC: heartbeats and metric samples (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from nodeagent.runtime.spec import ReplicaInfo
from schemas import (
    ZERO,
    Amount,
    MetricSample,
    NodeHeartbeat,
    Presence,
    PresenceMode,
    ReplicaReport,
    ReplicaState,
    ReplicaUsage,
)

__all__ = ["heartbeat", "metric_sample", "what_it_says"]


def heartbeat(
    node: str,
    seq: int,
    capacity: Amount,
    allocatable: Amount,
    presence: Presence,
    replicas: Sequence[ReplicaInfo],
    labels: dict[str, str],
    runtime: str,
    unsaved: Mapping[str, float | None] = MappingProxyType({}),
    data_root: Path | None = None,
    mode: PresenceMode = PresenceMode.SUSPEND,
) -> NodeHeartbeat:
    """A heartbeat: the PC, its presence, and every replica with its state and use (and,
    paused, the work an eviction would lose: ``unsaved``)."""
    return NodeHeartbeat(
        node=node, seq=seq, sent_at=datetime.now(UTC), capacity=capacity.wire(),
        allocatable=allocatable.wire(), usage=sum((r.usage for r in replicas), ZERO).wire(),
        presence=presence,
        replicas=tuple(
            ReplicaReport(replica_id=r.replica_id, namespace=r.namespace, app=r.app,
                          state=r.state, reservation=r.reservation.wire(), usage=r.usage.wire(),
                          unsaved_s=unsaved.get(r.replica_id)
                          if r.state is ReplicaState.PAUSED else None)
            for r in replicas
        ),
        labels=labels, runtime=runtime, data_root=None if data_root is None else str(data_root),
        batched_commands=True, presence_mode=mode,
    )  # fmt: skip


def what_it_says(beat: NodeHeartbeat) -> str:
    """A heartbeat's content but for its count, time, usage figures and presence's start
    (computed afresh each time): when this is as in the last heartbeat sent, a
    ``NodeAlive`` may stand in for it."""
    return beat.model_dump_json(exclude=_CHANGING)


_CHANGING: dict[str, Any] = {
    "seq": True, "sent_at": True, "usage": True, "presence": {"since"},
    "replicas": {"__all__": {"usage"}},
}  # fmt: skip


def metric_sample(
    node: str,
    used: Amount,
    capacity: Amount,
    presence: Presence,
    replicas: Sequence[ReplicaInfo],
    departed: Iterable[str] = (),
) -> MetricSample:
    """A metric sample: the PC's use, what its live replicas reserve, each one's use, and
    the namespaces whose last replica here went since the previous sample."""
    use = used.wire()
    return MetricSample(
        node=node, at=datetime.now(UTC), cpu_millicores=use.cpu_millicores,
        memory_mib=use.memory_mib, capacity=capacity.wire(),
        reserved=sum((r.reservation for r in replicas), ZERO).wire(), presence=presence.state,
        replicas=tuple(
            ReplicaUsage(replica_id=r.replica_id, namespace=r.namespace, app=r.app,
                         cpu_millicores=r.usage.cpu_millicores, memory_mib=r.usage.memory_mib,
                         cpu_s=round(r.cpu_s, 3),
                         reserved_cpu_millicores=r.reservation.wire().cpu_millicores)
            for r in replicas
        ),
        departed=tuple(sorted(departed)),
    )  # fmt: skip
