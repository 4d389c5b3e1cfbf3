"""What a runtime is asked to run, and what it reports (internal state: dataclasses)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas import ReplicaState, Resources

__all__ = ["ReplicaInfo", "ReplicaSpec"]


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """One replica to run: whose, what, and within which limits."""

    replica_id: str
    namespace: str
    app: str
    image: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cpu_millicores: int = 1000
    memory_mib: int = 256


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """A replica as the runtime sees it now."""

    replica_id: str
    namespace: str
    app: str
    state: ReplicaState
    reservation: Resources
    usage: Resources = field(default_factory=Resources)
    exit_code: int | None = None
    log_tail: tuple[str, ...] = ()
