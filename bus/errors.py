"""The exceptions the bus library raises, each saying what went wrong and what to do."""

from __future__ import annotations

__all__ = [
    "AuthUnavailable",
    "BrokerUnavailable",
    "BusError",
    "CredentialsRefused",
    "DoorClosed",
    "InvalidMessage",
    "PublishRefused",
    "RequestRefused",
    "RpcTimeout",
    "Unroutable",
]


class BusError(Exception):
    """Base of every error the bus library raises."""


class BrokerUnavailable(BusError):
    """The broker could not be reached, or stayed unreachable past a deadline."""


class PublishRefused(BusError):
    """The broker refused this publish for good (no permission for its exchange or routing
    key): retrying it cannot help."""


class DoorClosed(PublishRefused):
    """The owner's door (:func:`bus.names.door`) does not exist: the namespace has no quota
    and no key yet, or the PC no key."""


class RequestRefused(BusError):
    """The platform refused a request, or has nothing by the name it was asked about; the
    message says why."""


class Unroutable(BusError):
    """A mandatory message matched no queue: nobody consumes what it was sent to."""


class RpcTimeout(BusError):
    """An RPC got no answer in time."""


class InvalidMessage(BusError):
    """A delivered message cannot be handled; ``reason`` says why, for the dead-letter queue."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CredentialsRefused(BusError):
    """The broker refused the credentials, or the auth service would not trade the API key
    for a broker token; the message says why."""


class AuthUnavailable(CredentialsRefused):
    """The auth service could not be reached to trade the API key."""
