"""Requests people make of the platform, and the answers they get.

Users publish deploy/scale/delete requests for their own namespace; admins publish quota
and cordon requests. Each carries a ``request_id`` chosen by the requester: the platform
applies a request once however often it is delivered.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.base import (
    AppId,
    EnvVars,
    ImageRef,
    LabelKey,
    LabelValue,
    Message,
    NamespaceMessage,
    NamespaceName,
    NodeName,
    Owner,
    PlatformMessage,
    Reason,
    RequestId,
    WireModel,
)
from schemas.resources import CpuMillicores, MemoryMib

__all__ = [
    "CordonRequest",
    "DeleteRequest",
    "DeployRequest",
    "QuotaSet",
    "ReplicaCount",
    "Replicas",
    "RequestResult",
    "ScaleRequest",
    "Workload",
]

#: How many replicas an app asks for.
Replicas = Annotated[int, Field(ge=0, le=10_000)]
#: How many replicas are counted somewhere (running, on a PC): more than asked for while
#: surplus ones stop, never more than a campus could hold.
ReplicaCount = Annotated[int, Field(ge=0, le=1_000_000)]
Port = Annotated[int, Field(ge=1, le=65_535)]


class Workload(WireModel):
    """What to run: an image, its command, environment and ports."""

    image: ImageRef
    command: tuple[Annotated[str, StringConstraints(max_length=4096)], ...] = Field(
        default=(), max_length=64
    )
    env: EnvVars = Field(default_factory=dict)
    ports: tuple[Port, ...] = Field(default=(), max_length=32)


class _NamespaceRequest(NamespaceMessage):
    request_id: RequestId
    app: AppId


class DeployRequest(Workload, _NamespaceRequest):
    """Create or replace an application: run ``replicas`` copies of an image."""

    schema_name = "DeployRequest"

    replicas: Replicas = 1
    cpu_millicores: Annotated[CpuMillicores, Field(ge=1)] = 1000
    memory_mib: Annotated[MemoryMib, Field(ge=4)] = 256
    node_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=16)
    prefetch: Annotated[int, Field(ge=1, le=1000)] = 1


class ScaleRequest(_NamespaceRequest):
    """Change how many replicas of an existing application should run."""

    schema_name = "ScaleRequest"

    replicas: Replicas


class DeleteRequest(_NamespaceRequest):
    """Remove an application and stop all its replicas."""

    schema_name = "DeleteRequest"


class RequestResult(Message):
    """The platform's answer to a deploy, scale, delete, quota or cordon request."""

    schema_name = "RequestResult"

    request_id: RequestId
    namespace: NamespaceName | None = None
    accepted: bool
    reason: Reason = ""

    def owner(self) -> Owner:
        return Owner.platform() if self.namespace is None else Owner.namespace(self.namespace)


class QuotaSet(PlatformMessage):
    """Set a namespace's maximum total reservation (admin only)."""

    schema_name = "QuotaSet"

    request_id: RequestId
    namespace: NamespaceName
    cpu_millicores: CpuMillicores
    memory_mib: MemoryMib


class CordonRequest(PlatformMessage):
    """Stop placing replicas on a PC (cordon), allow it again (uncordon), or empty it (drain)."""

    schema_name = "CordonRequest"

    request_id: RequestId
    node: NodeName
    action: Literal["cordon", "uncordon", "drain"]
    reason: Reason = ""
