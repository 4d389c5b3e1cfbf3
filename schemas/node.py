"""What a PC's agent tells the platform: heartbeats, presence, replica status, metrics.

A node publishes only under its own ``node.<node>.…`` routing keys, and every body names
that node, so a consumer can refuse a body that pretends to come from another PC.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from schemas.base import (
    AppId,
    Count,
    LabelKey,
    LabelValue,
    NamespaceName,
    NodeMessage,
    Reason,
    ReplicaId,
    Timestamp,
    WireModel,
)
from schemas.resources import CpuMillicores, CpuSeconds, MemoryMib, Resources

__all__ = [
    "MetricSample",
    "NodeAlive",
    "NodeHeartbeat",
    "NodePresence",
    "Presence",
    "PresenceCause",
    "PresenceMode",
    "PresenceState",
    "Refusal",
    "ReplicaReport",
    "ReplicaState",
    "ReplicaStatus",
    "ReplicaUsage",
]

MAX_REPLICAS_PER_NODE = 1024


class PresenceState(StrEnum):
    """Whether a person is using the PC, and whether replicas run beside them."""

    IDLE = "idle"
    BUSY = "busy"
    #: A person is here, and replicas share the PC with them at the lowest priority, in a
    #: reduced allocatable (a PC in ``coexist`` mode): it takes work that fits.
    SHARED = "shared"


class PresenceMode(StrEnum):
    """What a PC does with its replicas while a person uses it."""

    #: Freeze them all, as soon as anyone is there.
    SUSPEND = "suspend"
    #: Keep running a share of them at the lowest priority, frozen while the person's own
    #: work needs the CPU or memory runs short (class hours of its timetable suspend).
    COEXIST = "coexist"


class PresenceCause(StrEnum):
    """The signal that decided the presence state."""

    NONE = "none"
    SESSION = "session"
    INPUT = "input"
    LOAD = "load"
    TIMETABLE = "timetable"
    STARTING = "starting"


class ReplicaState(StrEnum):
    """Where a replica is in its life on a PC."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    EXITED = "exited"
    FAILED = "failed"


class Presence(WireModel):
    """A PC's presence state, the signal that caused it, and since when it holds."""

    state: PresenceState
    cause: PresenceCause
    since: Timestamp
    detail: Reason = ""


#: An absolute folder path, as a PC mounts a site's share.
DataRoot = Annotated[str, StringConstraints(pattern=r"^/[^\x00]*$", max_length=1024)]


class ReplicaReport(WireModel):
    """One replica as its PC sees it, carried in every heartbeat."""

    replica_id: ReplicaId
    namespace: NamespaceName
    app: AppId
    state: ReplicaState
    reservation: Resources
    usage: Resources = Resources()
    #: A paused replica's work that an eviction would throw away (seconds since its
    #: running calls' last checkpoints or starts), as its worker said; None: unknown.
    unsaved_s: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)] | None = None


class NodeHeartbeat(NodeMessage):
    """Sent by every agent each second: capacity, what runs there, and the presence state."""

    schema_name = "NodeHeartbeat"
    #: Version 1 had no replica's ``unsaved_s`` (read as unknown: evicted at once) nor
    #: ``data_root`` (read as none); versions 1 and 2 no ``batched_commands`` (read as
    #: false); versions 1 to 3 no ``presence_mode`` (read as suspend) nor shared presence.
    schema_version = 4
    older_versions = frozenset({1, 2, 3})

    seq: Count
    sent_at: Timestamp
    capacity: Resources
    allocatable: Resources
    usage: Resources
    presence: Presence
    replicas: tuple[ReplicaReport, ...] = Field(default=(), max_length=MAX_REPLICAS_PER_NODE)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=16)
    runtime: Annotated[str, StringConstraints(pattern=r"^(docker|process)$")] = "process"
    #: The site data root its replicas' namespace folders are under (``--data-root``).
    data_root: DataRoot | None = None
    #: The agent takes several commands in one message (``StartReplicas``, ``StopReplicas``).
    batched_commands: bool = False
    #: What the PC does with replicas while a person uses it (its ``allocatable`` is the
    #: reduced share while its presence is shared).
    presence_mode: PresenceMode = PresenceMode.SUSPEND


class NodeAlive(NodeMessage):
    """Sent by an agent each second in which it sends no heartbeat: it is there, and what
    its last heartbeat said still holds (an agent sends a whole heartbeat when that
    changes, and every few seconds)."""

    schema_name = "NodeAlive"

    seq: Count
    sent_at: Timestamp


class NodePresence(NodeMessage):
    """Published the moment a PC's presence changes (after its replicas were paused)."""

    schema_name = "NodePresence"
    #: Version 1 had no shared presence.
    schema_version = 2
    older_versions = frozenset({1})

    presence: Presence


class Refusal(StrEnum):
    """Why a PC did not run a replica it was told to start: something about the PC, not
    the app, so placement does not back off the app for it."""

    #: A person is at the PC (or its timetable or load keeps it for people): it takes
    #: no replica now, or it paused the one that was starting.
    NOT_ACCEPTING = "not-accepting"
    #: The replica's reservation does not fit what the PC has left.
    NO_ROOM = "no-room"


#: The first words of version 1's refusals (agents before typed refusals), by refusal.
_V1_REFUSALS = {"this PC is ": Refusal.NOT_ACCEPTING, "needs ": Refusal.NO_ROOM}


class ReplicaStatus(NodeMessage):
    """A replica changed state on a PC (started, paused, exited with a code, failed, ...)."""

    schema_name = "ReplicaStatus"
    schema_version = 2
    older_versions = frozenset({1})

    replica_id: ReplicaId
    namespace: NamespaceName
    app: AppId
    state: ReplicaState
    at: Timestamp
    reason: Reason = ""
    #: Set when the PC refused the replica; ``reason`` says the same for people.
    refusal: Refusal | None = None
    exit_code: Annotated[int, Field(ge=-255, le=255)] | None = None
    log_tail: tuple[Annotated[str, StringConstraints(max_length=1024)], ...] = Field(
        default=(), max_length=20
    )

    @classmethod
    def from_older(cls, version: int, body: bytes) -> ReplicaStatus:
        """Version 1 had no ``refusal``; its agents' refusals began with fixed words, which
        no later agent's reason is read for (version 2 says it in ``refusal``)."""
        read = cls.model_validate_json(body)
        if version != 1 or read.refusal is not None:
            raise ValueError(f"ReplicaStatus version {version} has no refusal field")
        refusal = next((r for start, r in _V1_REFUSALS.items() if read.reason.startswith(start)),
                       None)  # fmt: skip
        return read.model_copy(update={"refusal": refusal})


class ReplicaUsage(WireModel):
    """Resources one replica used during a metrics interval, and since it started."""

    replica_id: ReplicaId
    namespace: NamespaceName
    app: AppId
    cpu_millicores: CpuMillicores
    memory_mib: MemoryMib
    #: CPU seconds it has used since it started (its control group's counter): what
    #: ``bus usage`` sums, so a lost sample loses nothing.
    cpu_s: CpuSeconds = 0.0
    #: The CPU it reserves on this PC.
    reserved_cpu_millicores: CpuMillicores = 0


class MetricSample(NodeMessage):
    """Resource use of one PC and each of its replicas, every few seconds."""

    schema_name = "MetricSample"
    #: Version 1 had no replica's ``cpu_s`` nor ``reserved_cpu_millicores`` (read as 0:
    #: such a replica counts for no CPU in ``bus usage``); versions 1 and 2 no shared
    #: presence.
    schema_version = 3
    older_versions = frozenset({1, 2})

    at: Timestamp
    cpu_millicores: CpuMillicores
    memory_mib: MemoryMib
    capacity: Resources
    reserved: Resources
    presence: PresenceState
    replicas: tuple[ReplicaUsage, ...] = Field(default=(), max_length=MAX_REPLICAS_PER_NODE)
    #: Namespaces that had replicas here at the previous sample and have none now: their
    #: use of this PC is zero from this sample on (a chart shows a drop, not a held value).
    departed: tuple[NamespaceName, ...] = Field(default=(), max_length=MAX_REPLICAS_PER_NODE)
