"""Commands the placement leader sends to one PC's agent.

Every command carries the sender's leader ``epoch``: an agent drops a command whose epoch is
older than the newest it has seen, so a deposed leader can never undo its successor's work.
Commands are idempotent by ``replica_id``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from schemas.base import AppId, Count, NamespaceName, NodeMessage, Reason, ReplicaId, WireModel
from schemas.node import MAX_REPLICAS_PER_NODE
from schemas.requests import Workload
from schemas.resources import Resources

__all__ = [
    "STARTS_PER_MESSAGE_MAX",
    "PauseReplica",
    "RenewToken",
    "ReplicaCommand",
    "ReplicaStart",
    "ReplicaStop",
    "ResumeReplica",
    "StartReplica",
    "StartReplicas",
    "StopReplica",
    "StopReplicas",
]

Epoch = Annotated[Count, Field(description="Journal offset at which the sender became leader.")]
#: Kept out of ``repr`` so a token never lands in a log line.
BrokerToken = Annotated[str, StringConstraints(max_length=16_384), Field(repr=False)]


class ReplicaCommand(NodeMessage):
    """What every command to a PC carries: the sender's epoch and the replica it is about."""

    epoch: Epoch
    replica_id: ReplicaId


class ReplicaStart(Workload):
    """One replica to start: what a :class:`StartReplica` says besides its PC and epoch."""

    replica_id: ReplicaId
    namespace: NamespaceName
    app: AppId
    reservation: Resources
    token: BrokerToken


class StartReplica(ReplicaStart, ReplicaCommand):
    """Start one replica of an application on this PC (no-op if it already runs)."""

    schema_name = "StartReplica"


#: The most starts one :class:`StartReplicas` carries.
STARTS_PER_MESSAGE_MAX = 64


class StartReplicas(NodeMessage):
    """Start several replicas on this PC: one message (and one confirm) for them all, each
    start as it would come alone, with its own token. Sent only to agents that say in their
    heartbeats that they take several commands in one message."""

    schema_name = "StartReplicas"

    epoch: Epoch
    starts: tuple[ReplicaStart, ...] = Field(min_length=1, max_length=STARTS_PER_MESSAGE_MAX)


class PauseReplica(ReplicaCommand):
    """Freeze a replica in place (its memory stays, it uses no CPU)."""

    schema_name = "PauseReplica"


class ResumeReplica(ReplicaCommand):
    """Thaw a paused replica."""

    schema_name = "ResumeReplica"


class ReplicaStop(WireModel):
    """One replica to stop: what a :class:`StopReplica` says besides its PC and epoch."""

    replica_id: ReplicaId
    grace_s: Annotated[float, Field(ge=0, le=600)] = 10.0
    reason: Reason = ""


class StopReplica(ReplicaStop, ReplicaCommand):
    """Stop a replica: SIGTERM, then SIGKILL after ``grace_s`` (at once if it is paused)."""

    schema_name = "StopReplica"


class StopReplicas(NodeMessage):
    """Stop several replicas on this PC: one message for them all, each stop as it would
    come alone. Sent only to agents that say in their heartbeats that they take it."""

    schema_name = "StopReplicas"

    epoch: Epoch
    stops: tuple[ReplicaStop, ...] = Field(min_length=1, max_length=MAX_REPLICAS_PER_NODE)


class RenewToken(ReplicaCommand):
    """Replace the broker token in a replica's mounted token file before it expires."""

    schema_name = "RenewToken"

    token: BrokerToken
