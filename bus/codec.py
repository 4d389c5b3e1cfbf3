"""Turning messages into AMQP bodies and properties, and deliveries back into messages.

Every body is the JSON of a :class:`schemas.Message`; its schema name and version travel
in the headers. :func:`decode` refuses, with a reason fit for a dead-letter queue, anything
that is too large, of the wrong kind or version, not valid JSON, not valid for its schema,
that arrived on a route its body does not own, or from a sender who may not send it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic
from pydantic import ValidationError

from bus import names
from bus.errors import InvalidMessage
from bus.trust import sender_refusal
from schemas import MESSAGES, SCHEMA_HEADER, SCHEMA_VERSION_HEADER, Message

__all__ = [
    "CONTENT_TYPE",
    "MAX_BODY_BYTES",
    "Delivery",
    "decode",
    "decode_event",
    "delivery_of",
    "encode",
    "summarize_validation_error",
]

CONTENT_TYPE = "application/json"
#: Every message of the catalogue, by schema name: what an onlooker of the events accepts.
_ANY: Mapping[str, type[Message]] = {cls.schema_name: cls for cls in MESSAGES}
#: Bodies above this size are refused unread (the broker's own limit is far higher).
MAX_BODY_BYTES = 1024 * 1024
_PERSISTENT = 2


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the broker said about a delivered message, beside its body."""

    exchange: str
    routing_key: str
    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    #: The sender's broker user name, which the broker checked (:mod:`bus.trust`).
    user_id: str | None = None


def delivery_of(message: AbstractIncomingMessage) -> Delivery:
    """Wrap an aio-pika delivery."""
    return Delivery(
        exchange=message.exchange or "",
        routing_key=message.routing_key or "",
        body=message.body,
        headers=message.headers or {},
        redelivered=bool(message.redelivered),
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        user_id=message.user_id,
    )


def encode(
    message: Message,
    *,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    persistent: bool = True,
) -> tuple[bytes, Basic.Properties]:
    """The body and properties of a message, ready for ``basic_publish``."""
    properties = Basic.Properties(
        content_type=CONTENT_TYPE,
        delivery_mode=_PERSISTENT if persistent else 1,
        message_id=uuid.uuid4().hex,
        correlation_id=correlation_id,
        reply_to=reply_to,
        headers={
            SCHEMA_HEADER: message.schema_name,
            SCHEMA_VERSION_HEADER: message.schema_version,
        },
    )
    return message.model_dump_json().encode(), properties


def summarize_validation_error(error: ValidationError, limit: int = 5) -> str:
    """A one-line account of a pydantic error: ``field.path: message; ...``."""
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(str(part) for part in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    more = error.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def _schema_of(
    delivery: Delivery, accepts: Mapping[str, type[Message]]
) -> tuple[type[Message], int]:
    name = delivery.headers.get(SCHEMA_HEADER)
    if not isinstance(name, str):
        raise InvalidMessage(
            f"missing or non-text header {SCHEMA_HEADER!r}; expected one of {sorted(accepts)}"
        )
    cls = accepts.get(name)
    if cls is None:
        shown = name[:64]
        raise InvalidMessage(f"schema {shown!r} is not accepted here; expected {sorted(accepts)}")
    version = delivery.headers.get(SCHEMA_VERSION_HEADER)
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidMessage(f"missing or non-integer header {SCHEMA_VERSION_HEADER!r}")
    if version != cls.schema_version and version not in cls.older_versions:
        spoken = sorted({cls.schema_version, *cls.older_versions})
        raise InvalidMessage(
            f"{name} version {version} is not supported; this consumer reads "
            f"version{'s' if len(spoken) > 1 else ''} {', '.join(map(str, spoken))}"
        )
    return cls, version


def decode(
    delivery: Delivery,
    accepts: Mapping[str, type[Message]],
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    check_route: bool = True,
) -> Message:
    """The message a delivery carries.

    Args:
        delivery: the delivered body, headers and route.
        accepts: the schemas this consumer handles, by schema name.
        max_body_bytes: bodies larger than this are refused unread.
        check_route: refuse a body that does not belong on the route it came by (only
            the platform publishes through the default exchange, so deliveries from it
            are not checked for their route), or whose sender, as the broker vouches in
            ``user_id``, may not send it (:func:`bus.trust.may_send`).

    Raises:
        InvalidMessage: with the reason, for the dead-letter queue.
    """
    size = len(delivery.body)
    if size > max_body_bytes:
        raise InvalidMessage(f"body of {size} bytes exceeds the limit of {max_body_bytes}")
    cls, version = _schema_of(delivery, accepts)
    try:
        if version == cls.schema_version:
            message = cls.model_validate_json(delivery.body)
        else:
            message = cls.from_older(version, delivery.body)
    except ValidationError as error:
        raise InvalidMessage(
            f"invalid {cls.schema_name}: {summarize_validation_error(error)}"
        ) from None
    except ValueError as error:  # a body its older version could not have sent
        raise InvalidMessage(f"invalid {cls.schema_name} version {version}: {error}") from None
    if check_route and delivery.exchange != names.DEFAULT_EXCHANGE:
        expected = names.route(message)
        actual = names.Route(delivery.exchange, delivery.routing_key)
        if actual != expected:
            raise InvalidMessage(
                f"{cls.schema_name} for {message.owner()} belongs on "
                f"{expected.exchange}/{expected.routing_key}, but arrived on "
                f"{actual.exchange}/{actual.routing_key[:255]}"
            )
    if check_route and (refusal := sender_refusal(delivery.user_id, message)) is not None:
        raise InvalidMessage(refusal)
    return message


def decode_event(message: AbstractIncomingMessage) -> Message:
    """Any catalogue message a delivery carries, checked as :func:`decode` checks it: for
    onlookers of the events (an event stream, a console, ``bus events``) that refuse
    nothing to the dead-letter queue but must not show what is not what it claims.

    Raises:
        InvalidMessage: with the reason.
    """
    return decode(delivery_of(message), _ANY)
