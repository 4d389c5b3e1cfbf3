"""The desired state: what the journal says should be, rebuilt by applying its entries
(deployments, quotas, cordons, leaders' epochs, API keys and their revocations).

Pure: no I/O. Every control-plane service keeps one, fed by its journal reader. An entry
whose request id was applied before (a publish retried across a reconnect can land twice)
changes nothing. Each applied request id is kept with a digest of its request, so the
same id sent again with other content can be told from a redelivery (and refused).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from bus.journal import Entry
from schemas import (
    CordonRequest,
    DeleteRequest,
    DeployRequest,
    KeyIssued,
    KeyView,
    LeaderTookOver,
    Message,
    QuotaSet,
    Resources,
    ScaleRequest,
    TokenRevoke,
)

__all__ = ["AppKey", "DesiredState", "Spec", "digest"]

AppKey = tuple[str, str]  # (namespace, app)


@dataclass(frozen=True, slots=True)
class Spec:
    """One application as it should run: its request, replica count and the entry's offset.

    ``generation`` is the offset of the deploy that defined it: a redeploy changes it, and
    replicas of an older generation are replaced.
    """

    request: DeployRequest
    replicas: int
    generation: int

    @property
    def key(self) -> AppKey:
        """(namespace, app)."""
        return (self.request.namespace, self.request.app)

    @property
    def reservation(self) -> Resources:
        """What one replica reserves."""
        return Resources(
            cpu_millicores=self.request.cpu_millicores, memory_mib=self.request.memory_mib
        )


def digest(message: Message) -> str:
    """What a request says, in a few bytes: its schema and every field."""
    content = f"{message.schema_name}:{message.model_dump_json()}"
    return hashlib.sha256(content.encode()).hexdigest()[:32]


@dataclass
class DesiredState:
    """Deployments, quotas, cordons and leaders as of the last applied journal entry."""

    deployments: dict[AppKey, Spec] = field(default_factory=dict)
    quotas: dict[str, Resources] = field(default_factory=dict)
    cordons: dict[str, str] = field(default_factory=dict)  # node -> "cordon" | "drain"
    leaders: dict[str, int] = field(default_factory=dict)  # service -> its epoch
    keys: dict[str, KeyView] = field(default_factory=dict)  # API keys issued, by key id
    revoked: dict[str, int] = field(default_factory=dict)  # key id -> offset of its revocation
    applied: dict[str, str] = field(default_factory=dict)  # request id -> its digest
    offset: int = -1  # the last entry applied

    def apply(self, entry: Entry) -> None:
        """Apply one journal entry (a repeated request id is ignored)."""
        self.offset = entry.offset
        message = entry.message
        request_id = getattr(message, "request_id", None)
        if request_id is not None:
            if request_id in self.applied:
                return
            self.applied[request_id] = digest(message)
        match message:
            case DeployRequest():
                key = (message.namespace, message.app)
                self.deployments[key] = Spec(message, message.replicas, entry.offset)
            case ScaleRequest():
                key = (message.namespace, message.app)
                if key in self.deployments:
                    current = self.deployments[key]
                    self.deployments[key] = Spec(
                        current.request, message.replicas, current.generation
                    )
            case DeleteRequest():
                self.deployments.pop((message.namespace, message.app), None)
            case QuotaSet():
                self.quotas[message.namespace] = Resources(
                    cpu_millicores=message.cpu_millicores, memory_mib=message.memory_mib
                )
            case CordonRequest():
                if message.action == "uncordon":
                    self.cordons.pop(message.node, None)
                else:
                    self.cordons[message.node] = message.action
            case LeaderTookOver():
                self.leaders[message.service] = entry.offset
            case KeyIssued():
                self.keys[message.key.key_id] = message.key
            case TokenRevoke():
                self.revoked.setdefault(message.key_id, entry.offset)

    def reserved(self, namespace: str, *, without: str | None = None) -> tuple[int, int]:
        """(CPU millicores, MiB) the namespace's deployments reserve in all, optionally
        leaving one app out."""
        cpu = memory = 0
        for (owner, app), spec in self.deployments.items():
            if owner == namespace and app != without:
                cpu += spec.replicas * spec.request.cpu_millicores
                memory += spec.replicas * spec.request.memory_mib
        return cpu, memory
