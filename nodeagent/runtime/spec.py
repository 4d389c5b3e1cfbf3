"""What a runtime is asked to run, and what it reports (internal state: dataclasses)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from schemas import MAX_CPU_MILLICORES, ZERO, Amount, ReplicaState

__all__ = ["ENDED", "CpuMeter", "ReplicaInfo", "ReplicaSpec", "StartCancelled", "StartFailed"]

#: Replicas in these states hold no resources (they wait only for their StopReplica).
ENDED = frozenset({ReplicaState.EXITED, ReplicaState.FAILED})
#: What a replica reserves unless told otherwise: one core and 256 MiB.
_DEFAULT_RESERVATION = Amount(1000, 256)


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """One replica to run: whose, what, and within which limits."""

    replica_id: str
    namespace: str
    app: str
    image: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    reservation: Amount = _DEFAULT_RESERVATION
    #: A folder holding the replica's broker token as ``token`` (the agent rewrites it).
    token_dir: Path | None = None
    #: A folder the replica writes its ``status`` in (see :mod:`nodeagent.status`).
    status_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """A replica as the runtime sees it now."""

    replica_id: str
    namespace: str
    app: str
    state: ReplicaState
    reservation: Amount
    usage: Amount = ZERO
    #: CPU seconds it has used since it started, as of the last measurement.
    cpu_s: float = 0.0
    exit_code: int | None = None
    log_tail: tuple[str, ...] = ()


class StartFailed(Exception):
    """A replica could not be started; the message says why, for its failed status."""


class StartCancelled(StartFailed):
    """The PC stopped taking replicas (a person arrived) before the replica began."""


@dataclass(slots=True)
class CpuMeter:
    """Turns a cumulative CPU-time counter into millicores between two readings."""

    seen: tuple[float, float] | None = None  # (monotonic clock, CPU seconds) at the last reading

    def millicores(self, cpu_s: float, now: float) -> int:
        """The CPU rate since the previous reading (0 for the first one)."""
        rate = 0
        if self.seen is not None and now > self.seen[0]:
            rate = max(0, round((cpu_s - self.seen[1]) / (now - self.seen[0]) * 1000))
        self.seen = (now, cpu_s)
        return min(rate, MAX_CPU_MILLICORES)

    @property
    def total_s(self) -> float:
        """The counter at the last reading: CPU seconds used so far (0 before any)."""
        return self.seen[1] if self.seen is not None else 0.0
