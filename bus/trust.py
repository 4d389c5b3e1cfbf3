"""Who sent a message, as the broker vouches, and whether they may send it.

RabbitMQ refuses a publish whose ``user_id`` property is not the connection's own user
name, and the property travels unchanged through every route a message can take
(carbon copies, dead-lettering, alternate exchanges, exchange-to-exchange bindings). So
the platform takes a message's sender from ``user_id`` and from nothing the sender chose
(its body, its routing key).

A broker token names its holder ``<role>:<subject>:<key>`` (the OAuth 2 backend names the
connection after the token's ``sub``): ``user:alice:3f2a…``, ``node:edge:91bc…``,
``admin:ops:…``, ``replica:alice:<replica id>``. Any other user name is one of the
broker's internal users, which only operators create for the platform's own services.
A message without ``user_id`` has no sender the broker vouches for and is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from schemas import (
    AppsQuery,
    CordonRequest,
    DeleteRequest,
    DeployRequest,
    JobCancel,
    JobDelete,
    JobSeal,
    JobsQuery,
    JobSubmit,
    KeysQuery,
    LogBatch,
    Message,
    MetricSample,
    NodeAlive,
    NodeHeartbeat,
    NodePresence,
    NodesQuery,
    OwnerKind,
    QuotaSet,
    ReplicaStatus,
    ScaleRequest,
    TokenIssue,
    TokenRevoke,
    UsageQuery,
)
from schemas.base import DNS_LABEL_PATTERN

__all__ = ["PLATFORM", "Principal", "TokenRole", "may_send", "sender_refusal"]

TokenRole = Literal["user", "node", "replica", "admin"]
_TOKEN_ROLES: frozenset[str] = frozenset(get_args(TokenRole))
_LABEL = re.compile(DNS_LABEL_PATTERN)
_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: What a namespace's users (and admins) send: requests and questions about their apps.
_NAMESPACE_REQUESTS = (
    DeployRequest,
    ScaleRequest,
    DeleteRequest,
    AppsQuery,
    JobSubmit,
    JobSeal,
    JobCancel,
    JobDelete,
    JobsQuery,
    UsageQuery,  # as an admin's question (everyone's, or by PC), the admins' door only
)
#: What a PC's agent sends about itself.
_NODE_EVENTS = (NodeHeartbeat, NodeAlive, NodePresence, ReplicaStatus, MetricSample, LogBatch)
#: What only an admin (or the platform) sends.
_ADMIN_REQUESTS = (QuotaSet, CordonRequest, TokenIssue, TokenRevoke, NodesQuery, KeysQuery)


@dataclass(frozen=True, slots=True)
class Principal:
    """A sender the broker vouches for: a platform service, or a broker token's holder."""

    role: TokenRole | Literal["platform"]
    subject: str = ""
    key: str = ""

    @classmethod
    def token(cls, role: TokenRole, subject: str, key: str) -> Principal:
        """A token holder.

        Raises:
            ValueError: the subject is not a DNS label or the key not a short token.
        """
        if not _LABEL.fullmatch(subject) or not _KEY.fullmatch(key):
            raise ValueError(f"not a principal: role {role!r}, subject {subject!r}, key {key!r}")
        return cls(role, subject, key)

    @property
    def user_name(self) -> str:
        """The broker user name of a token holder: ``<role>:<subject>:<key>``."""
        return f"{self.role}:{self.subject}:{self.key}"

    @classmethod
    def from_user_id(cls, user_id: str | None) -> Principal | None:
        """The principal a delivery's ``user_id`` names; None when it names nobody."""
        if not user_id:
            return None
        role, subject, key = [*user_id.split(":", 2), "", ""][:3]
        if role not in _TOKEN_ROLES:
            return PLATFORM  # an internal broker user: created by operators, for services
        try:
            return cls.token(role, subject, key)  # type: ignore[arg-type]  # checked above
        except ValueError:
            return None

    def __str__(self) -> str:
        return "the platform" if self.role == "platform" else f"{self.role} {self.subject}"


#: The platform's own services (internal broker users).
PLATFORM = Principal("platform")


def may_send(sender: Principal, message: Message) -> bool:
    """Whether ``sender`` may send ``message``: the platform anything; an admin its
    requests and any namespace's; a user only its namespace's requests; a PC only its own
    events; a replica nothing the platform acts on."""
    if sender.role == "platform":
        return True
    owner = message.owner()
    match sender.role:
        case "admin":
            return isinstance(message, _ADMIN_REQUESTS + _NAMESPACE_REQUESTS)
        case "user":
            return isinstance(message, _NAMESPACE_REQUESTS) and owner.name == sender.subject
        case "node":
            return (
                isinstance(message, _NODE_EVENTS)
                and owner.kind is OwnerKind.NODE
                and owner.name == sender.subject
            )
    return False


def sender_refusal(user_id: str | None, message: Message) -> str | None:
    """Why a message with this ``user_id`` is refused, or None if its sender may send it."""
    sender = Principal.from_user_id(user_id)
    if sender is None:
        shown = "no user_id" if not user_id else f"user_id {user_id[:128]!r}"
        return f"{message.schema_name} with {shown}: the broker vouches for no sender"
    if may_send(sender, message):
        return None
    return f"{sender} may not send {message.schema_name} for {message.owner()}"
