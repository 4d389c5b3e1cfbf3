"""Requests to the auth service (admin only) and what it records and answers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StringConstraints

from schemas.base import DNS_LABEL_PATTERN, PlatformMessage, Reason, RequestId, WireModel
from schemas.resources import Resources

__all__ = [
    "KeyIssued",
    "KeyReply",
    "KeyView",
    "KeysQuery",
    "KeysReply",
    "ReplicaTokenReply",
    "ReplicaTokenRequest",
    "Role",
    "TokenIssue",
    "TokenRevoke",
]

Role = Literal["user", "node", "admin"]
KeyId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


class TokenIssue(PlatformMessage):
    """Issue a long-lived API key for a user (namespace), a PC (node) or an admin."""

    schema_name = "TokenIssue"

    request_id: RequestId
    role: Role
    subject: Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN)] = Field(
        description="The namespace of a user, the node of a PC, the name of an admin."
    )
    name: Annotated[str, StringConstraints(max_length=128)] = ""
    ttl_s: Annotated[int, Field(ge=60, le=5 * 365 * 86_400)] = 365 * 86_400
    limits: Resources | None = Field(
        default=None, description="A user's quota; set through the journal when given."
    )


class TokenRevoke(PlatformMessage):
    """Revoke an API key: no new broker tokens, and its open connections are closed."""

    schema_name = "TokenRevoke"

    request_id: RequestId
    key_id: KeyId
    reason: Reason = ""


Subject = Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN)]


class KeyView(WireModel):
    """An API key as the platform remembers it (never the key itself)."""

    key_id: KeyId
    role: Role
    subject: Subject
    name: Annotated[str, StringConstraints(max_length=128)] = ""
    expires_at: AwareDatetime
    revoked: bool = False


class KeyIssued(PlatformMessage):
    """Journal entry: an API key was issued (its secret went only to the admin)."""

    schema_name = "KeyIssued"

    request_id: RequestId
    key: KeyView


class KeyReply(PlatformMessage):
    """The answer to a TokenIssue: the new API key, shown once."""

    schema_name = "KeyReply"

    request_id: RequestId
    accepted: bool
    reason: Reason = ""
    key: KeyView | None = None
    api_key: Annotated[str, StringConstraints(max_length=16_384), Field(repr=False)] = ""


class KeysQuery(PlatformMessage):
    """Which API keys exist (admin)."""

    schema_name = "KeysQuery"


class KeysReply(PlatformMessage):
    """Every API key issued, revoked ones included."""

    schema_name = "KeysReply"

    keys: tuple[KeyView, ...] = Field(default=(), max_length=100_000)


class ReplicaTokenRequest(PlatformMessage):
    """The placement service asks for a replica's broker token (to start or renew it)."""

    schema_name = "ReplicaTokenRequest"

    namespace: Subject
    app: Subject
    replica_id: Subject


class ReplicaTokenReply(PlatformMessage):
    """A replica's broker token: its namespace's task and result traffic only."""

    schema_name = "ReplicaTokenReply"

    replica_id: Subject
    token: Annotated[str, StringConstraints(max_length=16_384), Field(repr=False)]
    expires_at: AwareDatetime
