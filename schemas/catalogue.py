"""The catalogue of every bus message, and its JSON Schema export for other languages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.auth import (
    KeyIssued,
    KeyReply,
    KeysQuery,
    KeysReply,
    ReplicaTokenReply,
    ReplicaTokenRequest,
    TokenIssue,
    TokenRevoke,
)
from schemas.base import Message
from schemas.commands import (
    PauseReplica,
    RenewToken,
    ResumeReplica,
    StartReplica,
    StartReplicas,
    StopReplica,
    StopReplicas,
)
from schemas.events import BridgeStatus, CordonChanged, DeploymentStatus, QuotaChanged
from schemas.jobs import (
    JobCancel,
    JobDelete,
    JobEnded,
    JobForgotten,
    JobSeal,
    JobsQuery,
    JobsReply,
    JobSubmit,
)
from schemas.journal import JournalMarker, JournalSnapshot, LeaderTookOver
from schemas.logs import LogBatch
from schemas.node import MetricSample, NodeAlive, NodeHeartbeat, NodePresence, ReplicaStatus
from schemas.queries import AppsQuery, AppsReply, NodesQuery, NodesReply
from schemas.requests import (
    CordonRequest,
    DeleteRequest,
    DeployRequest,
    QuotaSet,
    RequestResult,
    ScaleRequest,
)
from schemas.usage import UsageQuery, UsageReply

__all__ = [
    "MESSAGES",
    "SCHEMA_HEADER",
    "SCHEMA_VERSION_HEADER",
    "export_json_schemas",
    "json_schema",
    "lookup",
]

#: AMQP header naming the body's schema, e.g. ``DeployRequest``.
SCHEMA_HEADER = "idlecloud-schema"
#: AMQP header carrying the schema's version (an integer).
SCHEMA_VERSION_HEADER = "idlecloud-schema-version"

MESSAGES: tuple[type[Message], ...] = (
    DeployRequest,
    ScaleRequest,
    DeleteRequest,
    RequestResult,
    QuotaSet,
    CordonRequest,
    NodeHeartbeat,
    NodeAlive,
    NodePresence,
    ReplicaStatus,
    MetricSample,
    StartReplica,
    StartReplicas,
    PauseReplica,
    ResumeReplica,
    StopReplica,
    StopReplicas,
    RenewToken,
    TokenIssue,
    TokenRevoke,
    DeploymentStatus,
    LeaderTookOver,
    JournalMarker,
    JournalSnapshot,
    AppsQuery,
    AppsReply,
    NodesQuery,
    NodesReply,
    KeyIssued,
    KeyReply,
    KeysQuery,
    KeysReply,
    ReplicaTokenRequest,
    ReplicaTokenReply,
    QuotaChanged,
    JobSubmit,
    JobSeal,
    JobCancel,
    JobDelete,
    JobEnded,
    JobForgotten,
    JobsQuery,
    JobsReply,
    LogBatch,
    UsageQuery,
    UsageReply,
    CordonChanged,
    BridgeStatus,
)

_BY_NAME: dict[str, type[Message]] = {cls.schema_name: cls for cls in MESSAGES}


def lookup(schema_name: str) -> type[Message] | None:
    """The message class with this schema name, or None."""
    return _BY_NAME.get(schema_name)


def json_schema(cls: type[Message]) -> dict[str, Any]:
    """The JSON Schema of one message, with the headers a publisher must set."""
    schema = cls.model_json_schema(mode="validation")
    schema["$id"] = f"https://idlecloud.dev/schemas/{cls.schema_id()}"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["x-amqp-headers"] = {
        SCHEMA_HEADER: cls.schema_name,
        SCHEMA_VERSION_HEADER: cls.schema_version,
    }
    return schema


def export_json_schemas(directory: Path) -> list[Path]:
    """Write ``<Name>.v<version>.json`` for every message and an ``index.json``.

    Args:
        directory: where to write; created if missing.

    Returns:
        The paths written, the index last.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index: list[dict[str, Any]] = []
    for cls in MESSAGES:
        path = directory / f"{cls.schema_name}.v{cls.schema_version}.json"
        path.write_text(json.dumps(json_schema(cls), indent=2, sort_keys=True) + "\n")
        written.append(path)
        index.append(
            {
                "name": cls.schema_name,
                "version": cls.schema_version,
                "file": path.name,
                "description": (cls.__doc__ or "").strip(),
            }
        )
    index_path = directory / "index.json"
    index_path.write_text(
        json.dumps(
            {
                "headers": {
                    SCHEMA_HEADER: "the message's name",
                    SCHEMA_VERSION_HEADER: "its version (integer)",
                },
                "content_type": "application/json",
                "messages": index,
            },
            indent=2,
        )
        + "\n"
    )
    written.append(index_path)
    return written
