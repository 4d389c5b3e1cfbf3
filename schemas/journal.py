"""Entries only the control plane writes into the journal, besides the admitted requests.

The journal (a RabbitMQ stream) holds every admitted change to the desired state as the
request that caused it (DeployRequest, ScaleRequest, DeleteRequest, QuotaSet,
CordonRequest), plus these two kinds of bookkeeping entry.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from schemas.base import Count, PlatformMessage

__all__ = ["JournalMarker", "LeaderTookOver"]

ServiceName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,31}$")]
InstanceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


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
