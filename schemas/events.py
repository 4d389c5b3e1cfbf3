"""Facts the control plane publishes: apps' statuses, quotas and cordons as they change."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from schemas.base import (
    AppId,
    Count,
    NamespaceMessage,
    NamespaceName,
    NodeName,
    PlatformMessage,
    Reason,
    Timestamp,
)
from schemas.requests import ReplicaCount, Replicas
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
    desired: Replicas
    running: ReplicaCount
    replicas_per_node: dict[NodeName, ReplicaCount] = Field(default_factory=dict, max_length=10_000)
    reason: Reason = ""
    at: Timestamp


class QuotaChanged(PlatformMessage):
    """A namespace's quota was set (after the journal recorded it)."""

    schema_name = "QuotaChanged"

    namespace: NamespaceName
    quota: Resources
    at: Timestamp


class CordonChanged(PlatformMessage):
    """An admin cordoned, drained or uncordoned a PC (after the journal recorded it)."""

    schema_name = "CordonChanged"

    node: NodeName
    action: Literal["cordon", "uncordon", "drain"]
    reason: Reason = ""
    at: Timestamp


class BridgeStatus(PlatformMessage):
    """How the Kubernetes bridge is doing: the API server, the nodes it cordoned, evictions."""

    schema_name = "BridgeStatus"

    api_reachable: bool
    nodes_mapped: Count
    cordoned: tuple[KubeNodeName, ...] = Field(default=(), max_length=10_000)
    evicted_total: Count = 0
    refused_total: Count = 0
    pending_evictions: Count = 0
    last_error: Reason = ""
    at: Timestamp
