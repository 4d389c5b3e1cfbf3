"""Container runtimes behind one Protocol, :class:`Runtime`: the process runtime
(:mod:`.process`) and Docker (:mod:`.docker`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Callable

    from nodeagent.runtime.output import Output
    from nodeagent.runtime.spec import ReplicaInfo, ReplicaSpec

__all__ = ["DOCKER_NETWORK", "DOCKER_USER", "Runtime"]

#: Replicas' containers share the host's network (they reach the broker on loopback).
DOCKER_NETWORK = "host"
#: The unprivileged uid:gid replicas' containers run as: nobody.
DOCKER_USER = "65534:65534"


@runtime_checkable
class Runtime(Protocol):
    """Runs a PC's replicas: the process runtime, or Docker. Every call is idempotent."""

    name: str

    async def start(self, spec: ReplicaSpec, *, may_run: Callable[[], bool]) -> None:
        """Start a replica unless one with its id already exists.

        ``may_run`` is asked at the last moment before the replica's process would begin;
        if it says no, nothing runs and :class:`~nodeagent.runtime.spec.StartCancelled`
        is raised.
        """

    async def pause(self, replica_id: str) -> None:
        """Freeze a replica in place: it keeps its memory and uses no CPU."""

    async def resume(self, replica_id: str) -> None:
        """Thaw a paused replica."""

    async def stop(self, replica_id: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; a paused replica is killed at once."""

    async def replicas(self, *, with_usage: bool = False) -> list[ReplicaInfo]:
        """Every replica this runtime knows of on this PC, with its state.

        ``with_usage`` also measures CPU and memory use (slower: heartbeats ask for it,
        the pause on a person's arrival does not).
        """

    def replica_cpu_ns(self) -> dict[str, int]:
        """CPU time each replica has used so far, by replica, from its control group: cheap
        enough to read twenty times a second (a replica whose group is unknown is left out)."""

    async def read_output(self, replica_id: str, position: int, bound_bytes: int) -> Output:
        """What the replica printed since ``position`` (0 at first; then what the last
        read returned), keeping its local copy within ``bound_bytes`` where it can."""

    async def close(self) -> None:
        """Release what the runtime holds (connections); replicas keep running."""
