"""The base of every wire model: frozen, strict about extra fields, named and versioned.

Every message that crosses the bus is a subclass of :class:`Message`. Its schema name and
version are class attributes; the bus puts them in the message headers so a consumer can
refuse a body of the wrong kind or version before it parses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, ClassVar, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

__all__ = [
    "DNS_LABEL_PATTERN",
    "MAX_STRING_LENGTH",
    "AppId",
    "Count",
    "EnvVars",
    "ImageRef",
    "LabelKey",
    "LabelValue",
    "Message",
    "NamespaceMessage",
    "NamespaceName",
    "NodeMessage",
    "NodeName",
    "Owner",
    "OwnerKind",
    "PlatformMessage",
    "Reason",
    "ReplicaId",
    "RequestId",
    "Timestamp",
    "WireModel",
    "utc_now",
]

#: RFC 1123 label, lower case: no dots, so a name can never add a segment to a routing key.
DNS_LABEL_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
#: The longest string any field accepts unless it says otherwise.
MAX_STRING_LENGTH = 4096

#: A counter or offset on the wire (sequence numbers, epochs): never negative, and at most
#: 2**53 - 1, the largest integer every JSON reader keeps exact (a PC beating 100 times a
#: second would take 2,800 years to reach it).
Count = Annotated[int, Field(ge=0, le=2**53 - 1)]

_DnsLabel = Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN, max_length=63)]
NamespaceName = Annotated[_DnsLabel, Field(description="A user's namespace (DNS label).")]
NodeName = Annotated[_DnsLabel, Field(description="A PC's name (DNS label).")]
AppId = Annotated[_DnsLabel, Field(description="An application id (DNS label).")]
ReplicaId = Annotated[_DnsLabel, Field(description="A replica id (DNS label).")]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$")]
LabelValue = Annotated[str, StringConstraints(max_length=63)]
Reason = Annotated[str, StringConstraints(max_length=1024)]
RequestId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$"),
    Field(description="Idempotency key chosen by the requester (8-64 URL-safe characters)."),
]


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


#: How far ahead of the receiver's clock a sender's may run, and how old a time may be.
TIMESTAMP_AHEAD = timedelta(days=1)
TIMESTAMP_BEHIND = timedelta(days=3653)


def _near_now(moment: datetime) -> datetime:
    """Refuse a time no sender's clock could say: far ahead of ours, or years ago."""
    now = utc_now()
    if moment > now + TIMESTAMP_AHEAD:
        raise ValueError(f"{moment.isoformat()} is more than a day ahead of {now:%Y-%m-%d %H:%M} "
                         "UTC (is the sender's clock right?)")  # fmt: skip
    if moment < now - TIMESTAMP_BEHIND:
        raise ValueError(f"{moment.isoformat()} is more than ten years before "
                         f"{now:%Y-%m-%d %H:%M} UTC (is the sender's clock right?)")  # fmt: skip
    return moment


#: When something happened, as the sender's clock says: aware, and within a day ahead of
#: or ten years behind the receiver's clock (a PC whose clock says 9999 or 1970 would
#: otherwise write points a time-series database refuses, or order events wrongly).
Timestamp = Annotated[
    AwareDatetime,
    AfterValidator(_near_now),
    Field(description="Within a day ahead of, or ten years behind, the receiver's clock."),
]


class OwnerKind(StrEnum):
    """Who owns a name: a namespace, a PC, or the platform itself."""

    NAMESPACE = "ns"
    NODE = "node"
    PLATFORM = "idlecloud"


@dataclass(frozen=True, slots=True)
class Owner:
    """The owner of a bus name: every name starts with its owner's prefix."""

    kind: OwnerKind
    name: str = ""

    @classmethod
    def namespace(cls, name: str) -> Owner:
        return cls(OwnerKind.NAMESPACE, name)

    @classmethod
    def node(cls, name: str) -> Owner:
        return cls(OwnerKind.NODE, name)

    @classmethod
    def platform(cls) -> Owner:
        return cls(OwnerKind.PLATFORM)

    @property
    def prefix(self) -> str:
        """The first segments of every name this owner owns, e.g. ``ns.alice``."""
        return self.kind.value if self.kind is OwnerKind.PLATFORM else f"{self.kind}.{self.name}"

    def __str__(self) -> str:
        return self.prefix


class WireModel(BaseModel):
    """A frozen, strict pydantic model that refuses unknown fields (``3.0`` is not an int)."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        str_max_length=MAX_STRING_LENGTH,
        validate_default=True,
    )


class Message(WireModel):
    """A top-level bus message: has a schema name, a version and an owner."""

    schema_name: ClassVar[str]
    schema_version: ClassVar[int] = 1
    #: Older versions a consumer still reads (:meth:`from_older`), for an upgrade during
    #: which senders of the older version meet consumers of this one.
    older_versions: ClassVar[frozenset[int]] = frozenset()

    @classmethod
    def from_older(cls, version: int, body: bytes) -> Self:
        """This message, read from the JSON of one of its :attr:`older_versions`: unless a
        schema says otherwise, an older version only lacks fields added since, which take
        their defaults.

        Raises:
            pydantic.ValidationError: the body is not valid for that version.
        """
        del version
        return cls.model_validate_json(body)

    def owner(self) -> Owner:
        """The owner this message speaks for; its routing key must start with this prefix."""
        raise NotImplementedError  # pragma: no cover - every concrete message overrides it

    @classmethod
    def schema_id(cls) -> str:
        """``Name/version``, as written in the JSON Schema ``$id``."""
        return f"{cls.schema_name}/{cls.schema_version}"


class NamespaceMessage(Message):
    """A message that speaks for one namespace (``ns.<namespace>.…``)."""

    namespace: NamespaceName

    def owner(self) -> Owner:
        return Owner.namespace(self.namespace)


class NodeMessage(Message):
    """A message that speaks for one PC (``node.<node>.…``)."""

    node: NodeName

    def owner(self) -> Owner:
        return Owner.node(self.node)


class PlatformMessage(Message):
    """A request only an admin or the platform may make (``idlecloud.…``)."""

    def owner(self) -> Owner:
        return Owner.platform()


def _no_reserved_prefix(env: dict[str, str]) -> dict[str, str]:
    reserved = sorted(key for key in env if key.startswith("IDLECLOUD_"))
    if reserved:
        raise ValueError(f"environment names {reserved} are reserved for the platform")
    return env


EnvVars = Annotated[
    dict[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")],
        Annotated[str, StringConstraints(max_length=MAX_STRING_LENGTH)],
    ],
    Field(max_length=64),
    AfterValidator(_no_reserved_prefix),
]

ImageRef = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9._/:@-]{0,254}$"),
    Field(description="A container image reference: lower-case letters, digits, . _ / : @ -"),
]
