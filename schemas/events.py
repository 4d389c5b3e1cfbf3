"""Facts the control plane publishes: apps' statuses, quotas and cordons as they change."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field

from schemas.base import (
    AppId,
    NamespaceMessage,
    NamespaceName,
    NodeName,
    PlatformMessage,
    Reason,
)
from schemas.resources import Resources

__all__ = [
    "BridgeStatus",
    "CordonChanged",
    "DeploymentState",
    "DeploymentStatus",
    "QuotaChanged",
]

#: A Kubernetes node's name: a DNS subdomain (dots allowed), at most 253 characters.
KubeNodeName = Annotated[
    str, Field(pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$", max_length=253)
]


class DeploymentState(StrEnum):
    """How an application is doing against what its owner asked for."""

    RUNNING = "running"
    DEGRADED = "degraded"
    PENDING = "pending"
    DELETED = "deleted"


class DeploymentStatus(NamespaceMessage):
    """An application's state, desired and running replica counts, and where they run."""

    schema_name = "DeploymentStatus"

    app: AppId
    state: DeploymentState
    desired: Annotated[int, Field(ge=0)]
    running: Annotated[int, Field(ge=0)]
    replicas_per_node: dict[NodeName, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, max_length=10_000
    )
    reason: Reason = ""
    at: AwareDatetime


class QuotaChanged(PlatformMessage):
    """A namespace's quota was set (after the journal recorded it)."""

    schema_name = "QuotaChanged"

    namespace: NamespaceName
    quota: Resources
    at: AwareDatetime


class CordonChanged(PlatformMessage):
    """An admin cordoned, drained or uncordoned a PC (after the journal recorded it)."""

    schema_name = "CordonChanged"

    node: NodeName
    action: Literal["cordon", "uncordon", "drain"]
    reason: Reason = ""
    at: AwareDatetime


class BridgeStatus(PlatformMessage):
    """How the Kubernetes bridge is doing: the API server, the nodes it cordoned, evictions."""

    schema_name = "BridgeStatus"

    api_reachable: bool
    nodes_mapped: Annotated[int, Field(ge=0)]
    cordoned: tuple[KubeNodeName, ...] = Field(default=(), max_length=10_000)
    evicted_total: Annotated[int, Field(ge=0)] = 0
    refused_total: Annotated[int, Field(ge=0)] = 0
    pending_evictions: Annotated[int, Field(ge=0)] = 0
    last_error: Reason = ""
    at: AwareDatetime
