"""Requests to the auth service (admin only) and what it records and answers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StringConstraints

from schemas.base import DNS_LABEL_PATTERN, PlatformMessage, Reason, RequestId, WireModel
from schemas.resources import Resources

__all__ = [
    "REPLICA_TOKENS_MAX",
    "KeyIssued",
    "KeyReply",
    "KeyView",
    "KeysQuery",
    "KeysReply",
    "ReplicaRef",
    "ReplicaToken",
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


#: Replicas' tokens asked for in one request (a reply of this many stays under 400 KiB).
REPLICA_TOKENS_MAX = 200


class ReplicaRef(WireModel):
    """A replica a broker token is asked for."""

    namespace: Subject
    app: Subject
    replica_id: Subject


class ReplicaTokenRequest(PlatformMessage):
    """The placement service asks for replicas' broker tokens (to start or renew them)."""

    schema_name = "ReplicaTokenRequest"
    #: Version 1 asked for one replica's token (its body: one :class:`ReplicaRef`).
    schema_version = 2
    older_versions = frozenset({1})

    replicas: tuple[ReplicaRef, ...] = Field(min_length=1, max_length=REPLICA_TOKENS_MAX)

    @classmethod
    def from_older(cls, version: int, body: bytes) -> ReplicaTokenRequest:
        """Version 1 was one replica's fields."""
        del version
        return cls(replicas=(ReplicaRef.model_validate_json(body),))


class ReplicaToken(WireModel):
    """A replica's broker token: its namespace's task and result traffic only."""

    replica_id: Subject
    token: Annotated[str, StringConstraints(max_length=16_384), Field(repr=False)]
    expires_at: AwareDatetime


class ReplicaTokenReply(PlatformMessage):
    """The tokens a :class:`ReplicaTokenRequest` asked for, in its order."""

    schema_name = "ReplicaTokenReply"
    #: Version 1 carried one token (its body: one :class:`ReplicaToken`).
    schema_version = 2
    older_versions = frozenset({1})

    tokens: tuple[ReplicaToken, ...] = Field(max_length=REPLICA_TOKENS_MAX)

    @classmethod
    def from_older(cls, version: int, body: bytes) -> ReplicaTokenReply:
        """Version 1 was one token's fields."""
        del version
        return cls(tokens=(ReplicaToken.model_validate_json(body),))
