"""The bodies only HTTP has (the bus's own models serve the rest): what the gateway's
handlers answer and read, and what its OpenAPI document describes, from one definition."""

from __future__ import annotations

from pydantic import Field

from schemas import Resources
from schemas.base import NamespaceName, RequestId, WireModel

__all__ = ["Accepted", "ApiError", "LoggedOut", "Quota", "ScaleBody", "Session", "SessionBody"]


class ScaleBody(WireModel):
    """How many replicas should run."""

    replicas: int = Field(ge=0, le=10_000)


class Accepted(WireModel):
    """A change the control plane admitted, by its request id."""

    accepted: bool
    request_id: RequestId


class Quota(WireModel):
    """A namespace's quota (none: it may not run anything), what its apps reserve, and what
    runs."""

    namespace: NamespaceName
    quota: Resources | None
    reserved: Resources
    running: Resources


class Session(WireModel):
    """Who a key (or the page's cookie) is."""

    role: str
    subject: str
    key_id: str


class SessionBody(WireModel):
    """The API key the page logs in with."""

    api_key: str


class LoggedOut(WireModel):
    """The page's cookie is cleared."""

    logged_out: bool


class ApiError(WireModel):
    """What went wrong and what to do; for an invalid body, each field's complaint."""

    error: str
    fields: dict[str, str] | None = None
