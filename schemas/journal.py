"""Entries only the control plane writes into the journal, besides the admitted requests.

The journal (a RabbitMQ stream) holds every admitted change to the desired state as the
request that caused it (DeployRequest, ScaleRequest, DeleteRequest, QuotaSet,
CordonRequest), plus these kinds of bookkeeping entry: a leader's takeover, a reader's
marker, and a snapshot of the whole desired state, so entries the stream's size bound
drops are never needed again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.auth import KeyId, KeyView
from schemas.base import (
    Count,
    Message,
    NamespaceName,
    NodeName,
    PlatformMessage,
    RequestId,
    WireModel,
)
from schemas.jobs import SnapshotJob
from schemas.requests import DeployRequest, Replicas
from schemas.resources import Resources

__all__ = ["Entry", "JournalMarker", "JournalSnapshot", "LeaderTookOver", "SnapshotApp"]

ServiceName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,31}$")]
InstanceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


@dataclass(frozen=True, slots=True)
class Entry:
    """One journal entry as a reader hands it on: the message and its offset in the stream."""

    offset: int
    message: Message


class LeaderTookOver(PlatformMessage):
    """A service instance became its service's leader; the entry's offset is its epoch."""

    schema_name = "LeaderTookOver"

    service: ServiceName
    instance: InstanceId


class JournalMarker(PlatformMessage):
    """Appended by a reader and read back: everything before it has been applied."""

    schema_name = "JournalMarker"

    instance: InstanceId
    seq: Count


#: A snapshot lists at most this many of each thing (apps, keys, quotas, request ids).
MAX_SNAPSHOT_ITEMS = 100_000
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class SnapshotApp(WireModel):
    """One application in a snapshot: its deploy, replica count and generation."""

    request: DeployRequest
    replicas: Replicas
    generation: Count


class JournalSnapshot(PlatformMessage):
    """The whole desired state as of the entry at offset ``through``; a reader that meets
    it takes it as its state and applies again only what came after ``through``."""

    schema_name = "JournalSnapshot"
    #: Version 1's jobs had no ``cpu_s`` nor ``redelivered`` (read as 0).
    schema_version = 2
    older_versions = frozenset({1})

    through: Count
    apps: tuple[SnapshotApp, ...] = Field(default=(), max_length=MAX_SNAPSHOT_ITEMS)
    quotas: dict[NamespaceName, Resources] = Field(
        default_factory=dict, max_length=MAX_SNAPSHOT_ITEMS
    )
    cordons: dict[NodeName, Literal["cordon", "drain"]] = Field(
        default_factory=dict, max_length=MAX_SNAPSHOT_ITEMS
    )
    leaders: dict[ServiceName, Count] = Field(default_factory=dict, max_length=64)
    keys: tuple[KeyView, ...] = Field(default=(), max_length=MAX_SNAPSHOT_ITEMS)
    revoked: dict[KeyId, Count] = Field(default_factory=dict, max_length=MAX_SNAPSHOT_ITEMS)
    jobs: tuple[SnapshotJob, ...] = Field(default=(), max_length=MAX_SNAPSHOT_ITEMS)
    #: The newest request ids applied (oldest first), each with its request's digest.
    applied: dict[RequestId, Digest] = Field(default_factory=dict, max_length=MAX_SNAPSHOT_ITEMS)
