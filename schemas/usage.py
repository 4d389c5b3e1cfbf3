"""How much CPU a namespace reserved and used (RPC): ``bus usage`` and the gateway's
``/usage``.

A user asks about her own namespace, through her door, broken down by app or by day; a
breakdown by PC, or every namespace at once, is an admin's question (the admins' door),
so the broker itself keeps a user from asking it.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from schemas.base import (
    AppId,
    Count,
    Message,
    NamespaceName,
    NodeName,
    Owner,
    Reason,
    Timestamp,
    WireModel,
)
from schemas.resources import CpuSeconds

__all__ = ["USAGE_BY", "UsageBy", "UsageQuery", "UsageReply", "UsageRow"]

#: What a usage answer is broken down by, beside the namespace.
UsageBy = Literal["app", "pc", "day"]
#: Each of them, for those that check a caller's choice.
USAGE_BY: tuple[UsageBy, ...] = get_args(UsageBy)


def _usage_owner(namespace: str | None, by: UsageBy) -> Owner:
    if namespace is None or by == "pc":
        return Owner.platform()
    return Owner.namespace(namespace)


class UsageQuery(Message):
    """CPU reserved and used from ``since`` to ``until`` (now if unset), per namespace
    and ``by``; one namespace's, or every one's (``namespace`` unset: an admin's)."""

    schema_name = "UsageQuery"

    namespace: NamespaceName | None = None
    since: Timestamp
    until: Timestamp | None = None
    by: UsageBy = "app"

    def owner(self) -> Owner:
        return _usage_owner(self.namespace, self.by)


class UsageRow(WireModel):
    """One namespace's CPU over the window, for one app, PC or day (the others unset)."""

    namespace: NamespaceName
    app: AppId | None = None
    node: NodeName | None = None
    #: The day's first moment (UTC), when broken down by day.
    day: Timestamp | None = None
    #: CPU seconds its replicas held reserved (reservation times time placed).
    reserved_cpu_s: CpuSeconds
    #: CPU seconds its replicas used (their control groups' counters).
    used_cpu_s: CpuSeconds
    replicas: Count
    #: The PCs its replicas ran on.
    nodes: tuple[NodeName, ...] = Field(default=(), max_length=10_000)
    #: Its first and last samples in the window (per app or PC; a day spans its day).
    first_at: Timestamp | None = None
    last_at: Timestamp | None = None


class UsageReply(Message):
    """The rows a :class:`UsageQuery` asked for, biggest use first."""

    schema_name = "UsageReply"
    #: Version 1's rows had no ``nodes``, ``first_at`` nor ``last_at`` (read as unset).
    schema_version = 2
    older_versions = frozenset({1})

    namespace: NamespaceName | None = None
    by: UsageBy
    since: Timestamp
    until: Timestamp
    rows: tuple[UsageRow, ...] = Field(default=(), max_length=100_000)
    #: Set when the figures could not be read (InfluxDB down): why. No rows then.
    unavailable: Reason = ""

    def owner(self) -> Owner:
        return _usage_owner(self.namespace, self.by)
