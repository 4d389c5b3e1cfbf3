"""The gateway's OpenAPI 3.0 document, served at ``/openapi.json``.

Request bodies come from the same pydantic models the bus uses, so the HTTP API and the
bus cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from schemas import AppsReply, AppView, DeployRequest, NodeView
from schemas.base import DNS_LABEL_PATTERN, WireModel

__all__ = ["openapi"]

_REF = "#/components/schemas/{model}"


class ScaleBody(WireModel):
    """How many replicas should run."""

    replicas: int = Field(ge=0, le=10_000)


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        found.update(schema.pop("$defs", {}))
        found[model.__name__] = schema
    return found


def _deployment_body() -> dict[str, Any]:
    schema = DeployRequest.model_json_schema(ref_template=_REF)
    schema.pop("$defs", None)
    for filled in ("request_id", "namespace"):
        schema["properties"].pop(filled, None)
        if filled in schema.get("required", []):
            schema["required"].remove(filled)
    schema["title"] = "DeploymentBody"
    return schema


def _responses(ok: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    responses: dict[str, Any] = {
        "200": {"description": ok, **({"content": {"application/json": {"schema": schema}}}
                                      if schema else {})},
    }  # fmt: skip
    for status, why in (
        ("401", "no credential, or a bad one"),
        ("403", "not your namespace"),
        ("404", "no such app"),
        ("409", "refused (quota)"),
        ("422", "invalid body"),
        ("503", "the control plane did not answer"),
    ):
        responses[status] = {"description": why, **error}
    return responses


def _stream() -> dict[str, Any]:
    events = {"text/event-stream": {"schema": {"type": "string"}}}
    return {
        **_responses("events"),
        "200": {
            "description": "`event: <schema>` and `data: <JSON>` per event, until you hang up",
            "content": events,
        },
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _paths() -> dict[str, Any]:
    """Every route: its operations, their parameters, bodies and responses."""
    label = {"type": "string", "pattern": DNS_LABEL_PATTERN}
    namespace = {"name": "namespace", "in": "path", "required": True, "schema": label}
    app = {**namespace, "name": "app"}
    node = {**namespace, "name": "node"}
    action = {"name": "action", "in": "path", "required": True,
              "schema": {"type": "string", "enum": ["cordon", "uncordon", "drain"]}}  # fmt: skip
    deployments = "/v1/namespaces/{namespace}/deployments"
    return {
        deployments: {
            "get": {"summary": "Your apps", "parameters": [namespace],
                    "responses": _responses("apps", {"type": "array", "items": _ref("AppView")})},
            "post": {"summary": "Deploy an app", "parameters": [namespace],
                     "requestBody": _json_body("DeploymentBody"),
                     "responses": {**_responses("admitted"), "201": {"description": "admitted"}}},
        },
        deployments + "/{app}": {
            "get": {"summary": "One app", "parameters": [namespace, app],
                    "responses": _responses("the app", _ref("AppView"))},
            "patch": {"summary": "Scale an app", "parameters": [namespace, app],
                      "requestBody": _json_body("ScaleBody"), "responses": _responses("scaled")},
            "delete": {"summary": "Delete an app", "parameters": [namespace, app],
                       "responses": _responses("deleted")},
        },
        "/v1/namespaces/{namespace}/quota": {
            "get": {"summary": "Your quota and its use", "parameters": [namespace],
                    "responses": _responses("quota")},
        },
        "/v1/namespaces/{namespace}/events": {
            "get": {"summary": "Your namespace's events, live (server-sent events)",
                    "parameters": [namespace], "responses": _stream()},
        },
        "/v1/pcs": {"get": {"summary": "The PCs", "responses": _responses(
            "PCs", {"type": "array", "items": _ref("NodeView")})}},
        "/v1/pcs/events": {"get": {"summary": "PCs' presence and cordons, live (SSE)",
                                   "responses": _stream()}},
        "/v1/session": {
            "post": {"summary": "Log the page in with an API key (sets an HttpOnly cookie)",
                     "security": [], "requestBody": _json_body("SessionBody"),
                     "responses": _responses("who you are", _ref("Session"))},
            "get": {"summary": "Who is logged in", "responses": _responses("who", _ref("Session"))},
            "delete": {"summary": "Log out (clears the cookie)", "security": [],
                       "responses": _responses("logged out")},
        },
        "/v1/pcs/{node}/{action}": {"post": {"summary": "Cordon, uncordon or drain a PC (admin)",
                                             "parameters": [node, action],
                                             "responses": _responses("done")}},
    }  # fmt: skip


def _components() -> dict[str, Any]:
    """The bodies' schemas: the bus's own models where one exists, and the few the HTTP
    side adds (the deployment body, the page's session, errors)."""
    schemas = _schemas(AppView, NodeView, AppsReply, ScaleBody)
    schemas["DeploymentBody"] = _deployment_body()
    schemas["SessionBody"] = {
        "type": "object",
        "required": ["api_key"],
        "properties": {"api_key": {"type": "string"}},
    }
    schemas["Session"] = {
        "type": "object",
        "required": ["role", "subject", "key_id"],
        "properties": {name: {"type": "string"} for name in ("role", "subject", "key_id")},
    }
    schemas["Error"] = {"type": "object", "required": ["error"],
                        "properties": {"error": {"type": "string"}}}  # fmt: skip
    return {"schemas": schemas, "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}}  # fmt: skip


def openapi() -> dict[str, Any]:
    """The document: the routes (:func:`_paths`) and the bodies' schemas (:func:`_components`)."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "idlecloud gateway", "version": "1",
                 "description": "Deployments, quotas and PCs over HTTP, their events as "
                                "server-sent events, and the web page's session."},
        "paths": _paths(),
        "components": _components(),
        "security": [{"bearer": []}],
    }  # fmt: skip
