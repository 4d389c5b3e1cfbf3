"""The PC registry: soft state rebuilt from the agents' events (pure: no I/O, no clock).

Every heartbeat replaces what is known of its PC (capacity, labels, presence, replicas);
a presence event changes the presence at once (it arrives before the next heartbeat); a
replica status updates a known replica's state in between (a replica first appears with
its reservation in a heartbeat). A PC is lost once no heartbeat
came for ``node_timeout_s``. Heartbeats that arrive out of order (a ``seq`` a little
below the last) are ignored; one far below says the agent counts afresh (it restarted,
or the last count was not its own) and is taken. A ``seq`` further ahead of the last
than the agent could have counted since (:data:`MAX_BEATS_PER_S`) is refused, so a
forged or corrupted count cannot make the PC's real heartbeats look old.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas import NodeHeartbeat, NodePresence, PresenceState, ReplicaState, ReplicaStatus

__all__ = ["MAX_BEATS_PER_S", "NodeInfo", "Registry", "ReplicaInfo"]

#: No agent heartbeats faster than this.
MAX_BEATS_PER_S = 100
#: How far out of order a heartbeat may arrive and still be a late delivery.
_REORDER_WINDOW = 16


@dataclass(slots=True)
class ReplicaInfo:
    """A replica as its PC last reported it."""

    replica_id: str
    namespace: str
    app: str
    state: ReplicaState
    cpu_millicores: int
    memory_mib: int
    usage_cpu_millicores: int = 0
    usage_memory_mib: int = 0

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, app)."""
        return (self.namespace, self.app)


@dataclass(slots=True)
class NodeInfo:
    """A PC as its agent last reported it."""

    name: str
    capacity: tuple[int, int]
    allocatable: tuple[int, int]
    usage: tuple[int, int]
    presence: PresenceState
    cause: str
    last_seen: float
    seq: int
    labels: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, ReplicaInfo] = field(default_factory=dict)
    runtime: str = "process"


class Registry:
    """Every PC heard from, and whether it is still there; see the module's header."""

    def __init__(self, node_timeout_s: float = 3.0) -> None:
        self.node_timeout_s = node_timeout_s
        self.nodes: dict[str, NodeInfo] = {}

    def heartbeat(self, beat: NodeHeartbeat, now: float) -> bool:
        """Take in a heartbeat; False if it was ignored (late, or an impossible leap)."""
        known = self.nodes.get(beat.node)
        if known is not None:
            ahead = beat.seq - known.seq
            reachable = MAX_BEATS_PER_S * max(0.0, now - known.last_seen) + _REORDER_WINDOW
            if ahead > reachable:
                return False  # further ahead than the agent could have counted since
            if beat.seq > 1 and -_REORDER_WINDOW <= ahead <= 0:
                return False  # an older heartbeat, delivered late
        self.nodes[beat.node] = NodeInfo(
            name=beat.node,
            capacity=(beat.capacity.cpu_millicores, beat.capacity.memory_mib),
            allocatable=(beat.allocatable.cpu_millicores, beat.allocatable.memory_mib),
            usage=(beat.usage.cpu_millicores, beat.usage.memory_mib),
            presence=beat.presence.state,
            cause=beat.presence.cause.value,
            last_seen=now,
            seq=beat.seq,
            labels=dict(beat.labels),
            replicas={
                r.replica_id: ReplicaInfo(
                    r.replica_id,
                    r.namespace,
                    r.app,
                    r.state,
                    r.reservation.cpu_millicores,
                    r.reservation.memory_mib,
                    r.usage.cpu_millicores,
                    r.usage.memory_mib,
                )
                for r in beat.replicas
            },
            runtime=beat.runtime,
        )
        return True

    def presence(self, event: NodePresence) -> None:
        """A PC's presence changed (its replicas are already paused if it is busy)."""
        node = self.nodes.get(event.node)
        if node is not None:
            node.presence = event.presence.state
            node.cause = event.presence.cause.value
            if event.presence.state is PresenceState.BUSY:
                for replica in node.replicas.values():
                    if replica.state is ReplicaState.RUNNING:
                        replica.state = ReplicaState.PAUSED

    def status(self, event: ReplicaStatus) -> None:
        """A replica changed state on a PC."""
        node = self.nodes.get(event.node)
        if node is None:
            return
        replica = node.replicas.get(event.replica_id)
        if replica is not None:  # a new one appears with its reservation in the next heartbeat
            replica.state = event.state

    def lost(self, node: NodeInfo, now: float) -> bool:
        """True if the PC has not been heard from for ``node_timeout_s``."""
        return now - node.last_seen > self.node_timeout_s
