"""The bodies only HTTP has (the bus's own models serve the rest): what the gateway's
handlers answer and read, and what its OpenAPI document describes, from one definition."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from schemas import AppId, Resources
from schemas.base import NamespaceName, RequestId, WireModel

__all__ = [
    "Accepted",
    "ApiError",
    "JobBody",
    "JobResult",
    "LogEntry",
    "LoggedOut",
    "Quota",
    "ScaleBody",
    "Session",
    "SessionBody",
]

#: How many calls one job submitted over HTTP may have (bigger jobs: the SDK or the CLI).
MAX_HTTP_CALLS = 10_000


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


class JobBody(WireModel):
    """A job submitted over HTTP: each input is one call's list of JSON arguments."""

    app: AppId
    task: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
    name: Annotated[str, StringConstraints(max_length=128)] = ""
    inputs: tuple[tuple[Any, ...], ...] = Field(min_length=1, max_length=MAX_HTTP_CALLS)
    batch_size: int = Field(default=1, ge=1, le=10_000)


class JobResult(WireModel):
    """One call's outcome, a line of a job's results: its value (bytes in base64) or its
    error."""

    index: int = Field(ge=0)
    ok: bool
    value: Any = None
    value_base64: str | None = None
    error: str | None = None


class LogEntry(WireModel):
    """One line a replica printed (``platform``: a line its PC wrote about it)."""

    at: datetime
    app: AppId
    replica: str
    node: str
    stream: str
    text: str
