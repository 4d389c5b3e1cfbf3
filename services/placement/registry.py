"""The PC registry: soft state rebuilt from the agents' events (pure: no I/O, no clock).

Every heartbeat replaces what is known of its PC (capacity, labels, presence, replicas),
and a sign of life (``NodeAlive``, sent between heartbeats while nothing changed) says
that still holds; a presence event changes the presence at once (it arrives before the
next heartbeat); a replica status updates a known replica's state in between (a replica
first appears with its reservation in a heartbeat). A PC is lost once neither came for
``node_timeout_s``. Heartbeats and signs of life that arrive out of order (a ``seq`` a
little below the last) are ignored; one far below says the agent counts afresh (it
restarted, or the last count was not its own) and is taken. A ``seq`` further ahead of
the last than the agent could have counted since (:data:`MAX_BEATS_PER_S`) is refused, so
a forged or corrupted count cannot make the PC's real heartbeats look old.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas import (
    ZERO,
    Amount,
    NodeAlive,
    NodeHeartbeat,
    NodePresence,
    PresenceMode,
    PresenceState,
    ReplicaState,
    ReplicaStatus,
)
from services.state import AppKey

__all__ = ["MAX_BEATS_PER_S", "KnownReplica", "NodeInfo", "Registry"]

#: No agent heartbeats faster than this.
MAX_BEATS_PER_S = 100
#: How far out of order a heartbeat may arrive and still be a late delivery.
_REORDER_WINDOW = 16


@dataclass(slots=True)
class KnownReplica:
    """A replica as its PC last reported it."""

    replica_id: str
    namespace: str
    app: str
    state: ReplicaState
    reservation: Amount
    usage: Amount = ZERO
    #: Paused: the work an eviction would throw away, as its worker said (None: unknown).
    unsaved_s: float | None = None

    @property
    def key(self) -> AppKey:
        """(namespace, app)."""
        return (self.namespace, self.app)


@dataclass(slots=True)
class NodeInfo:
    """A PC as its agent last reported it."""

    name: str
    capacity: Amount
    allocatable: Amount
    usage: Amount
    presence: PresenceState
    cause: str
    last_seen: float
    seq: int
    labels: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, KnownReplica] = field(default_factory=dict)
    runtime: str = "process"
    #: The site data root its replicas' namespace folders are under, if any.
    data_root: str | None = None
    #: Its agent takes several commands in one message (``StartReplicas``, ``StopReplicas``).
    batched_commands: bool = False
    #: What it does with replicas while a person uses it.
    mode: PresenceMode = PresenceMode.SUSPEND


class Registry:
    """Every PC heard from, and whether it is still there; see the module's header."""

    def __init__(self, node_timeout_s: float = 3.0) -> None:
        self.node_timeout_s = node_timeout_s
        self.nodes: dict[str, NodeInfo] = {}

    def heartbeat(self, beat: NodeHeartbeat, now: float) -> bool:
        """Take in a heartbeat; False if it was ignored (late, or an impossible leap)."""
        known = self.nodes.get(beat.node)
        if known is not None and not _in_order(known, beat.seq, now):
            return False
        self.nodes[beat.node] = NodeInfo(
            name=beat.node,
            capacity=Amount.of(beat.capacity),
            allocatable=Amount.of(beat.allocatable),
            usage=Amount.of(beat.usage),
            presence=beat.presence.state,
            cause=beat.presence.cause.value,
            last_seen=now,
            seq=beat.seq,
            labels=dict(beat.labels),
            replicas={
                r.replica_id: KnownReplica(
                    r.replica_id,
                    r.namespace,
                    r.app,
                    r.state,
                    Amount.of(r.reservation),
                    Amount.of(r.usage),
                    r.unsaved_s,
                )
                for r in beat.replicas
            },
            runtime=beat.runtime,
            data_root=beat.data_root,
            batched_commands=beat.batched_commands,
            mode=beat.presence_mode,
        )
        return True

    def alive(self, event: NodeAlive, now: float) -> bool:
        """A sign of life: the PC's last heartbeat still holds. False if it was ignored
        (a PC not heard of yet, whose whole heartbeat comes within seconds; late; a leap)."""
        known = self.nodes.get(event.node)
        if known is None or not _in_order(known, event.seq, now):
            return False
        known.last_seen, known.seq = now, event.seq
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


def _in_order(known: NodeInfo, seq: int, now: float) -> bool:
    """Whether a heartbeat or sign of life counted ``seq`` may follow the PC's last."""
    ahead = seq - known.seq
    reachable = MAX_BEATS_PER_S * max(0.0, now - known.last_seen) + _REORDER_WINDOW
    if ahead > reachable:
        return False  # further ahead than the agent could have counted since
    return not (seq > 1 and -_REORDER_WINDOW <= ahead <= 0)  # not one delivered late
