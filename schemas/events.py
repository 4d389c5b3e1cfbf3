"""Facts the control plane publishes about a namespace's applications."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, Field

from schemas.base import AppId, NamespaceMessage, NodeName, Reason

__all__ = ["DeploymentState", "DeploymentStatus"]


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
