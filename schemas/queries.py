"""Questions to the control plane and their answers (RPC): apps, PCs, quotas.

A user asks about her own namespace only (the routing key says whose question it is); the
PC list is an admin's question.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from schemas.base import (
    DNS_LABEL_PATTERN,
    AppId,
    NamespaceMessage,
    NodeName,
    PlatformMessage,
    Reason,
    ReplicaId,
    Timestamp,
    WireModel,
)
from schemas.events import DeploymentState
from schemas.node import MAX_REPLICAS_PER_NODE, DataRoot, PresenceMode, PresenceState, ReplicaState
from schemas.requests import ReplicaCount, Replicas
from schemas.resources import Resources

__all__ = [
    "APPS_PAGE_MAX",
    "NODES_PAGE_MAX",
    "AppView",
    "AppsCursor",
    "AppsQuery",
    "AppsReply",
    "DataFolderView",
    "NodeView",
    "NodesQuery",
    "NodesReply",
    "ReplicaView",
]


#: The most rows (an app, or one of its replicas) one AppsReply page lists.
APPS_PAGE_MAX = 2000
#: Where a page of apps starts: after an app (``<app>``) or after one of its replicas
#: (``<app>/<node>/<replica>``: its replicas are listed by PC, then id).
_LABEL = DNS_LABEL_PATTERN[1:-1]
AppsCursor = Annotated[
    str, StringConstraints(pattern=f"^{_LABEL}(/{_LABEL}/{_LABEL})?$", max_length=191)
]


class AppsQuery(NamespaceMessage):
    """How are my apps doing (all of them, or one)? A page at a time: the rows (an app, or
    one of its replicas) after ``after``, at most ``limit`` of them (without a limit:
    every one)."""

    schema_name = "AppsQuery"
    #: Version 1 had no ``after`` and ``limit`` (read as: every app, in one reply).
    schema_version = 2
    older_versions = frozenset({1})

    app: AppId | None = None
    after: AppsCursor | None = None
    limit: Annotated[int, Field(ge=1, le=APPS_PAGE_MAX)] | None = None


class ReplicaView(WireModel):
    """One replica: where it runs and in what state."""

    replica_id: ReplicaId
    node: NodeName
    state: ReplicaState


class AppView(WireModel):
    """One app against what its owner asked for."""

    app: AppId
    image: str
    state: DeploymentState
    desired: Replicas
    running: ReplicaCount
    starting: ReplicaCount = 0
    reservation: Resources
    replicas_per_node: dict[NodeName, ReplicaCount] = Field(default_factory=dict, max_length=10_000)
    replicas: tuple[ReplicaView, ...] = Field(default=(), max_length=10_000)
    reason: Reason = ""


class DataFolderView(WireModel):
    """Where a namespace's data folder is on the PCs, and on how many of them."""

    path: DataRoot
    pcs: ReplicaCount


class AppsReply(NamespaceMessage):
    """A namespace's apps, its quota and what it reserves and runs, and its data folder."""

    schema_name = "AppsReply"
    #: Version 1 had no ``data_folders`` (read as none); 1 and 2 no ``next_after`` (read
    #: as: the last page).
    schema_version = 3
    older_versions = frozenset({1, 2})

    apps: tuple[AppView, ...] = Field(default=(), max_length=10_000)
    #: Where the next page starts (None: this was the last). An app whose replicas go on
    #: in the next page is listed again there, with the rest of them.
    next_after: AppsCursor | None = None
    #: The namespace's data folder as the live PCs mount it: one path on a uniform site.
    data_folders: tuple[DataFolderView, ...] = Field(default=(), max_length=64)
    quota: Resources | None = None
    reserved: Resources
    running: Resources
    at: Timestamp


#: The most PCs one NodesReply lists: a page stays well under the body limit (1 MiB).
NODES_PAGE_MAX = 2000


class NodesQuery(PlatformMessage):
    """The PCs the platform knows (an admin's question), a page at a time: those named
    after ``after``, at most ``limit`` of them (without a limit: every one)."""

    schema_name = "NodesQuery"
    #: Version 1 had no ``after`` and ``limit`` (read as: every PC, in one reply).
    schema_version = 2
    older_versions = frozenset({1})

    after: NodeName | None = None
    limit: Annotated[int, Field(ge=1, le=NODES_PAGE_MAX)] | None = None


class NodeView(WireModel):
    """A PC as placement sees it."""

    node: NodeName
    state: Annotated[str, Field(pattern=r"^(idle|busy|shared|lost|cordoned|draining)$")]
    presence: PresenceState
    #: What the PC does with replicas while a person uses it.
    mode: PresenceMode = PresenceMode.SUSPEND
    cause: str
    capacity: Resources
    allocatable: Resources
    reserved: Resources
    usage: Resources
    replicas: Annotated[int, Field(ge=0, le=MAX_REPLICAS_PER_NODE)]
    runtime: str
    seconds_since_heartbeat: Annotated[float, Field(ge=0, le=1e9)]


class NodesReply(PlatformMessage):
    """A page of PCs, by name, and when the answer was made; ``next_after`` is where the
    next page starts (None: this was the last)."""

    schema_name = "NodesReply"
    #: Version 1 had no ``next_after`` (read as: the last page); versions 1 and 2 no PC's
    #: ``mode`` (read as suspend) nor shared state.
    schema_version = 3
    older_versions = frozenset({1, 2})

    nodes: tuple[NodeView, ...] = Field(default=(), max_length=10_000)
    at: Timestamp
    next_after: NodeName | None = None
