"""Requests to the auth service: issue and revoke API keys (admin only)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.base import DNS_LABEL_PATTERN, PlatformMessage, Reason, RequestId
from schemas.resources import Resources

__all__ = ["Role", "TokenIssue", "TokenRevoke"]

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
