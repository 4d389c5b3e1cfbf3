"""The interfaces components implement, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bus.connection import Bus
    from nodeagent.runtime.spec import ReplicaInfo, ReplicaSpec
    from services.kubebridge.plan import KubeNode, KubePod

__all__ = ["KubeApi", "Runtime", "Service"]


@runtime_checkable
class Service(Protocol):
    """A component the service runner starts on a shared bus and stops gracefully."""

    name: str

    async def start(self, bus: Bus) -> None:
        """Declare what it needs and start consuming."""

    async def stop(self, grace_s: float) -> None:
        """Stop taking work; finish in-flight work within ``grace_s`` and requeue the rest."""


@runtime_checkable
class Runtime(Protocol):
    """Runs a PC's replicas: the process runtime, or Docker. Every call is idempotent."""

    name: str

    async def start(self, spec: ReplicaSpec) -> None:
        """Start a replica unless one with its id already exists."""

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

    async def close(self) -> None:
        """Release what the runtime holds (connections); replicas keep running."""


@runtime_checkable
class KubeApi(Protocol):
    """The few calls the Kubernetes bridge makes of an API server.

    Each raises :class:`~services.kubebridge.kube.KubeUnavailable` when the server cannot
    be reached or answers with a server error.
    """

    async def nodes(self) -> list[KubeNode]:
        """Every node that maps to a PC (by name or by the configured label)."""

    async def pods(self, node: str, namespaces: frozenset[str]) -> list[KubePod]:
        """The pods of ``namespaces`` on ``node``."""

    async def cordon(self, node: str, why: str) -> None:
        """Mark ``node`` unschedulable, noting that idlecloud did and why."""

    async def uncordon(self, node: str) -> None:
        """Mark ``node`` schedulable again and drop idlecloud's note."""

    async def evict(self, pod: KubePod) -> bool:
        """Ask the Eviction API to evict ``pod``; False if a PodDisruptionBudget refused."""

    async def close(self) -> None:
        """Release the connection."""
