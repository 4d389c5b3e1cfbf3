"""The gateway's OpenAPI 3.1 document, written from its route table (:mod:`.routes`).

OpenAPI 3.1's schemas are JSON Schema 2020-12, which is what pydantic writes, so bodies
come straight from the models the bus and the handlers use: validation schemas for what
a request sends, serialization schemas for what an answer holds. Each operation lists
the answers its route-table entry names, no more.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from bus.logs import SPAN_PATTERN
from schemas import AppView, DeployRequest, JobsReply, JobView, NodeView, UsageReply
from schemas.base import DNS_LABEL_PATTERN
from schemas.jobs import JOB_ID_PATTERN
from services.gateway.logs import MAX_LOG_LINES
from services.gateway.models import (
    Accepted,
    ApiError,
    JobBody,
    JobResult,
    LogEntry,
    LoggedOut,
    Quota,
    ScaleBody,
    Session,
    SessionBody,
)
from services.gateway.routes import ROUTES, Answer, Operation

__all__ = ["openapi"]

_REF = "#/components/schemas/{model}"
_LABEL = {"type": "string", "pattern": DNS_LABEL_PATTERN}
#: Every path parameter the routes use, and what it may be.
_PARAMETERS: dict[str, dict[str, Any]] = {
    "namespace": _LABEL,
    "app": _LABEL,
    "node": _LABEL,
    "job": {"type": "string", "pattern": JOB_ID_PATTERN},
    "action": {"type": "string", "enum": ["cordon", "uncordon", "drain"]},
}
#: Every query parameter the routes use, and what it may be.
_QUERY: dict[str, dict[str, Any]] = {
    "app": _LABEL,
    "replica": _LABEL,
    "since": {
        "type": "string",
        "pattern": SPAN_PATTERN,
        "description": "how far back: 30s, 10m, 2h, 30d (logs: 10m unless given; "
        "history and usage: 30d)",
    },
    "by": {"type": "string", "enum": ["app", "pc", "day"], "default": "app"},
    "tail": {"type": "integer", "minimum": 0, "maximum": MAX_LOG_LINES, "default": 100},
}
#: Each component: its model, and whether requests send it or answers hold it.
_MODELS: dict[str, tuple[type[BaseModel], Literal["validation", "serialization"]]] = {
    "AppView": (AppView, "serialization"),
    "NodeView": (NodeView, "serialization"),
    "Accepted": (Accepted, "serialization"),
    "Quota": (Quota, "serialization"),
    "Session": (Session, "serialization"),
    "LoggedOut": (LoggedOut, "serialization"),
    "Error": (ApiError, "serialization"),
    "Jobs": (JobsReply, "serialization"),
    "JobView": (JobView, "serialization"),
    "JobResult": (JobResult, "serialization"),
    "LogEntry": (LogEntry, "serialization"),
    "Usage": (UsageReply, "serialization"),
    "JobBody": (JobBody, "validation"),
    "ScaleBody": (ScaleBody, "validation"),
    "SessionBody": (SessionBody, "validation"),
}


def _ref(name: str) -> dict[str, Any]:
    """A component, or an array of one (``[Name]``)."""
    if name.startswith("["):
        return {"type": "array", "items": _ref(name[1:-1])}
    return {"$ref": _REF.format(model=name)}


def _answer(answer: Answer) -> dict[str, Any]:
    if answer.schema is None:  # an event stream
        content = {"text/event-stream": {"schema": {"type": "string"}}}
    else:
        content = {answer.media: {"schema": _ref(answer.schema)}}
    return {"description": answer.description, "content": content}


def _operation(op: Operation) -> dict[str, Any]:
    names = [part[1:-1] for part in op.path.split("/") if part.startswith("{")]
    document: dict[str, Any] = {
        "summary": op.summary,
        "operationId": op.handler.strip("_"),
        "responses": {str(answer.status): _answer(answer) for answer in op.answers},
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _PARAMETERS[name]}
        for name in names
    ] + [{"name": name, "in": "query", "schema": _QUERY[name]} for name in op.query]
    if parameters:
        document["parameters"] = parameters
    if op.body is not None:
        document["requestBody"] = {
            "required": True, "content": {"application/json": {"schema": _ref(op.body)}},
        }  # fmt: skip
    if op.public:
        document["security"] = []
    return document


def _paths() -> dict[str, Any]:
    """Every route of the table, by path and method."""
    paths: dict[str, dict[str, Any]] = {}
    for op in ROUTES:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return paths


def _deployment_body() -> dict[str, Any]:
    """A deploy request without what the gateway fills in (its id, the path's namespace)."""
    schema = DeployRequest.model_json_schema(ref_template=_REF)
    schema.pop("$defs", None)
    for filled in ("request_id", "namespace"):
        schema["properties"].pop(filled, None)
        if filled in schema.get("required", []):
            schema["required"].remove(filled)
    schema["title"] = "DeploymentBody"
    return schema


def _components() -> dict[str, Any]:
    """The bodies' schemas, and the bearer scheme."""
    schemas: dict[str, Any] = {}
    for name, (model, mode) in _MODELS.items():
        schema = model.model_json_schema(ref_template=_REF, mode=mode)
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    schemas["DeploymentBody"] = _deployment_body()
    schemas["Document"] = {"type": "object", "description": "An OpenAPI 3.1 document."}
    bearer = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    return {"schemas": schemas, "securitySchemes": {"bearer": bearer}}


def openapi() -> dict[str, Any]:
    """The document: the route table's operations and the bodies' schemas."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "idlecloud gateway", "version": "1",
                 "description": "Deployments, jobs, quotas and PCs over HTTP, their events "
                                "as server-sent events, and the web page's session."},
        "paths": _paths(),
        "components": _components(),
        "security": [{"bearer": []}],
    }  # fmt: skip
