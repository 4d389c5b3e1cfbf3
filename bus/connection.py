"""A robust connection to the broker, and publishing under publisher confirms.

:class:`Bus` wraps aio-pika's robust connection: when the broker drops it, the connection
is re-established, every channel, exchange, queue and binding declared through it is
declared again, and consumers resume. :meth:`Bus.publish` waits for the broker's confirm
and, if the connection is lost before the confirm arrives, publishes again once it is back
(at-least-once: a consumer may see a message twice, never zero times). A publish does not
wait for its frames to reach the socket (aiormq's ``wait``), only for the confirm: the
channel's lock is then held while the frames are queued, not until the writer has sent
them, so concurrent publishes are not serialized on a turn of the loop each (5,000
concurrent 6 KB publishes to 1,000 quorum queues: 3,441 a second waiting, 3,668-3,961
not; ``bench/broker_costs.py``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from pamqp.commands import Basic
from yarl import URL

from bus import addresses, names
from bus.codec import encode
from bus.errors import (
    BrokerUnavailable,
    CredentialsRefused,
    DoorClosed,
    PublishRefused,
    Unroutable,
)
from schemas import Message

__all__ = [
    "CONFIRM_WAIT_S",
    "HEARTBEAT_S",
    "PUBLISH_FAILURES",
    "TRANSIENT_ERRORS",
    "Bus",
    "broker_user_name",
    "cancelled_from_below",
    "unverified_claims",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Errors that mean "the connection or channel went away": retry once it is back.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
)

#: A nack (``DeliveryError``) too: a quorum queue or stream refuses messages while it elects
#: a new leader (a broker node of a cluster died), and takes them again a moment later.
_RETRYABLE: tuple[type[BaseException], ...] = (
    TimeoutError,
    aiormq.exceptions.DeliveryError,
    *TRANSIENT_ERRORS,
)
_SECRET_DEFERRED: tuple[type[BaseException], ...] = (RuntimeError, *TRANSIENT_ERRORS)
#: What a publish raises when the broker could not take the message (retry later).
PUBLISH_FAILURES: tuple[type[BaseException], ...] = (BrokerUnavailable, *TRANSIENT_ERRORS)


def broker_user_name(url: str) -> str:
    """The user name the broker gives a connection to ``url``: a broker token's ``sub``
    (the OAuth 2 backend's choice), else the URL's user. Publishes carry it as ``user_id``.
    """
    parsed = addresses.first(url)
    subject = (unverified_claims(parsed.password or "") or {}).get("sub")
    if isinstance(subject, str) and subject:
        return subject
    return parsed.user or "guest"


def unverified_claims(token: str) -> dict[str, Any] | None:
    """A JWT's claims, read without checking its signature (the broker checks it), or None
    for anything that is not a JWT. Here, not PyJWT: every replica reads its token's
    expiry as it starts, and importing PyJWT costs it 25 ms of CPU."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):  # json's and base64's, and bad UTF-8 (a ValueError)
        return None
    return claims if isinstance(claims, dict) else None


class _NodesConnection(aio_pika.RobustConnection):
    """A robust connection that tries a cluster's nodes in turn: each attempt to connect
    goes to the node after the one it last reached, and fails only once every node did.

    A node that took the connection but refused to restore a channel on it is alive: it
    is asked again after the reconnect interval, before any other node. The refusal is
    passing: an exclusive queue is still owned by the lost connection until its node (hung)
    is declared down (``net_ticktime``). Moving on instead led, past the other live nodes,
    back to the hung one, whose handshake waits out the whole connect timeout (10 s).
    """

    def __init__(self, url: URL, *, nodes: tuple[URL, ...], **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._nodes = nodes
        #: Where the first attempt starts: a random node, so a site's clients spread out.
        self._next = random.randrange(len(nodes))

    async def _RobustConnection__connect_transport(self) -> None:  # aio-pika's one attempt
        failure: BaseException | None = None
        for _ in self._nodes:
            node = self._nodes[self._next]
            self._next = (self._next + 1) % len(self._nodes)
            # the credentials stay the connection's own (update-secret changes them)
            self.url = self.url.with_host(node.host or "").with_port(node.port)
            try:
                await super()._RobustConnection__connect_transport()  # type: ignore[misc]
                return
            except CONNECTION_EXCEPTIONS as error:
                failure = error
                if isinstance(error, aiormq.exceptions.AMQPChannelError):  # it answered
                    log.info("broker node %s:%s refused a restore (%r)", node.host, node.port,
                             error)  # fmt: skip
                    self._next = (self._next - 1) % len(self._nodes)
                    raise
                log.info("broker node %s:%s unreachable (%r)", node.host, node.port, error)
        assert failure is not None  # there is at least one node
        raise failure


#: The AMQP heartbeat every connection asks for, in seconds: the broker then sends a frame
#: at least this often, even on an idle connection (its sender looks every half of it).
HEARTBEAT_S = 2
#: A connection that received no frame for (heartbeat + 1) x this many seconds is dropped
#: as stuck, and reopened on the next node. aiormq's default, 3, took 18 s to notice a hung
#: (SIGSTOPped) broker node at a 5 s heartbeat; at 2 s and 1, the silence that drops it is
#: 3 s, which a broker that answers never reaches. Set on aiormq's class: every connection
#: of a process that imports the bus is the bus's.
STUCK_AFTER_HEARTBEATS = 1
aiormq.Connection.HEARTBEAT_GRACE_MULTIPLIER = STUCK_AFTER_HEARTBEATS

#: A publish not confirmed within this long is published again on a new channel. A channel
#: keeps the stream leader it first wrote to: after the leader's node hung and came back,
#: its writes went nowhere and were never confirmed (RabbitMQ 3.10.8), while a new channel
#: finds the new leader.
CONFIRM_WAIT_S = 10.0


class _NoConfirm(TimeoutError):
    """No confirm within :data:`CONFIRM_WAIT_S` on the publish channel."""


def cancelled_from_below() -> bool:
    """Whether a ``CancelledError`` being handled is not the current task's own
    cancellation: aiormq fails what awaited a connection it dropped as stuck (see
    :data:`STUCK_AFTER_HEARTBEATS`) with one, a lost connection, not a caller cancelling."""
    task = asyncio.current_task()
    return task is not None and not task.cancelling()


async def _unless_dropped(waiting: Awaitable[_T]) -> _T:
    """What ``waiting`` (a confirm, a channel's opening) gives; a ``CancelledError`` from
    below is raised as a ``ConnectionError``, to be tried again."""
    try:
        return await waiting
    except asyncio.CancelledError:
        if not cancelled_from_below():
            raise
        raise ConnectionError("the broker connection was dropped as stuck") from None


class Bus:
    """One robust connection to the platform's broker, with a confirmed publish channel."""

    def __init__(
        self,
        url: str,
        *,
        connection_name: str = "idlecloud",
        heartbeat_s: int = HEARTBEAT_S,
        reconnect_interval_s: float = 0.5,
    ) -> None:
        self.url = url
        #: The name the broker knows this connection by, set as every publish's ``user_id``.
        self.user_name = broker_user_name(url)
        self.connection_name = connection_name
        self._heartbeat_s = heartbeat_s
        self._reconnect_interval_s = reconnect_interval_s
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._renewing = asyncio.Lock()
        self._reconnects = 0
        self._restored = asyncio.Event()

    @property
    def reconnects(self) -> int:
        """How many times the connection was lost and re-established."""
        return self._reconnects

    @property
    def connection(self) -> AbstractRobustConnection:
        """The underlying aio-pika connection (after :meth:`connect`)."""
        if self._connection is None:
            raise RuntimeError("Bus.connect() was not called")
        return self._connection

    @property
    def node_port(self) -> int | None:
        """The port of the broker node the connection last reached (of a cluster's several)."""
        return cast(aio_pika.RobustConnection, self.connection).url.port

    async def connect(self, timeout_s: float = 10.0) -> Self:
        """Connect and open the publish channel.

        Raises:
            CredentialsRefused: the broker refused the user name, password or token.
            BrokerUnavailable: the broker did not answer within ``timeout_s``.
        """
        try:
            nodes = addresses.nodes(self.url)
            connection = await aio_pika.connect_robust(
                nodes[0],
                connection_class=partial(_NodesConnection, nodes=nodes),
                timeout=timeout_s,
                heartbeat=self._heartbeat_s,
                reconnect_interval=self._reconnect_interval_s,
                client_properties={"connection_name": self.connection_name},
            )
        except aiormq.exceptions.ProbableAuthenticationError as error:
            raise CredentialsRefused(
                f"the broker at {addresses.redacted(self.url)} refused the credentials: {error}. "
                "Check the user name, password or token in the URL."
            ) from None
        except (TimeoutError, ConnectionError, aiormq.exceptions.AMQPError) as error:
            raise BrokerUnavailable(
                f"cannot reach the broker at {addresses.redacted(self.url)}: {error!r}. "
                "Is RabbitMQ running? (`make test` and `bus dev up` start one locally.)"
            ) from None
        connection.reconnect_callbacks.add(self._on_reconnect)
        connection.close_callbacks.add(self._on_close)
        self._connection = connection
        self._restored.set()
        self._publish_channel = await self.channel(on_return_raises=True)
        return self

    def _on_reconnect(self, _connection: AbstractRobustConnection | None) -> None:
        self._reconnects += 1
        self._restored.set()
        log.warning("reconnected to the broker (%d reconnects so far)", self._reconnects)

    def _on_close(self, *_args: object) -> None:
        self._restored.clear()

    async def restored(self) -> None:
        """Return once the connection is up with every channel it had restored.

        Between a broker's boot and its queues' recovery a reconnect can already succeed; a
        publish then is confirmed but a stream drops it (RabbitMQ 3.10). A channel's
        restore declares its queues again, which fails until they are back, so publishing
        after the restore reaches queues that are up.
        """
        await self._restored.wait()

    async def channel(
        self, *, prefetch: int | None = None, on_return_raises: bool = False
    ) -> AbstractRobustChannel:
        """A new robust channel with publisher confirms, restored after reconnects.

        Raises:
            ConnectionError: the connection was dropped as stuck meanwhile (try again).
        """
        channel = self.connection.channel(on_return_raises=on_return_raises)
        await _unless_dropped(channel.initialize())
        if prefetch is not None:
            await _unless_dropped(channel.set_qos(prefetch_count=prefetch))
        return channel

    def use_secret_on_reconnect(self, secret: str) -> None:
        """Present ``secret`` (a password or broker token) on every later reconnect."""
        connection = cast(aio_pika.RobustConnection, self.connection)
        connection.url = connection.url.with_password(secret)

    async def update_secret(self, secret: str) -> None:
        """Swap ``secret`` into the open connection (AMQP update-secret) and for reconnects.

        While the connection is down the new secret is kept for the reconnect.
        """
        self.use_secret_on_reconnect(secret)
        try:
            await self.connection.update_secret(secret, reason="secret renewed")
        except _SECRET_DEFERRED as error:
            log.info("update-secret deferred to the reconnect (%r)", error)

    async def _renew_publish_channel(self, failed: AbstractRobustChannel) -> None:
        """Replace the publish channel a refusal closed, or one that stopped confirming
        (once, however many publishes saw it fail): aio-pika does not reliably reopen a
        channel the broker closed."""
        async with self._renewing:
            if self._publish_channel is failed:
                try:
                    self._publish_channel = await self.channel(on_return_raises=True)
                except RuntimeError as error:  # the connection closed; it is being reopened
                    raise ConnectionError(f"the broker connection is reopening: {error}") from None
                with contextlib.suppress(*TRANSIENT_ERRORS, RuntimeError):
                    await failed.close()

    async def close(self) -> None:
        """Close the connection; unacked deliveries go back to their queues."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def __aenter__(self) -> Self:
        """Connect, unless connected already (``async with await Bus(url).connect()``
        would otherwise open a second connection and leak the first, whose reconnecting
        outlives a cancellation)."""
        return self if self._connection is not None else await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def publish(
        self,
        message: Message,
        *,
        route: names.Route | None = None,
        mandatory: bool = False,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        timeout_s: float = 30.0,
        before_restore: bool = False,
    ) -> None:
        """Publish a message on its route (or ``route``) and wait for the broker's confirm.

        Args:
            message: the message; its route comes from :func:`bus.names.route`.
            route: publish elsewhere (RPC replies go to the requester's reply queue).
            mandatory: fail with :class:`Unroutable` when no queue receives the message.
            reply_to: the requester's reply queue, for RPC requests.
            correlation_id: ties an RPC reply to its request.
            timeout_s: give up after this long without a confirm, across reconnects.
            before_restore: after a reconnect, publish once the connection is up, not once
                every channel is restored (:meth:`restored`): for a sign of life to a
                quorum queue, never to a stream. A consumer whose queue's leader was on a
                hung node took 8 to 9 s more to come back, and held an agent's heartbeats.

        Raises:
            Unroutable: ``mandatory`` and no queue is bound for the route.
            PublishRefused: this credential may not publish there (not worth retrying).
            BrokerUnavailable: no confirm within ``timeout_s``.
        """
        target = route or names.route(message)
        body, properties = encode(message, correlation_id=correlation_id, reply_to=reply_to)
        await self.publish_raw(target, body, properties, mandatory=mandatory,
                               timeout_s=timeout_s, before_restore=before_restore)  # fmt: skip

    async def publish_raw(
        self,
        route: names.Route,
        body: bytes,
        properties: Basic.Properties,
        *,
        mandatory: bool = False,
        timeout_s: float = 30.0,
        before_restore: bool = False,
    ) -> None:
        """Publish bytes under confirms, retrying across reconnects until ``timeout_s``
        (``before_restore``: see :meth:`publish`).

        Raises:
            Unroutable: ``mandatory`` and no queue is bound for the route.
            PublishRefused: the broker refused access (the channel it closed reopens).
            DoorClosed: the owner's door does not exist.
            BrokerUnavailable: no confirm within ``timeout_s``.
        """
        if self._publish_channel is None:
            raise RuntimeError("Bus.connect() was not called")
        properties.user_id = self.user_name
        deadline = time.monotonic() + timeout_s
        delay_s = 0.05
        while True:
            remaining_s = deadline - time.monotonic()
            try:  # a refusal's renewal that finds the connection closing is retried too
                try:
                    if remaining_s <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(remaining_s):
                        await (self.connection.ready() if before_restore else self.restored())
                        publisher = self._publish_channel
                        channel = await publisher.get_underlay_channel()
                        if channel.is_closed:  # closed by an earlier refusal: take a new one
                            await self._renew_publish_channel(publisher)
                            continue
                        # aiormq's abstract channel does not declare ``wait``; its channel has it
                        confirming = cast(aiormq.Channel, channel).basic_publish(
                            body,
                            exchange=route.exchange,
                            routing_key=route.routing_key,
                            properties=properties,
                            mandatory=mandatory,
                            wait=False,  # the confirm is what counts: see the module's header
                        )
                        try:
                            async with asyncio.timeout(CONFIRM_WAIT_S):
                                confirm = await _unless_dropped(confirming)
                        except TimeoutError:
                            raise _NoConfirm from None
                except aiormq.exceptions.PublishError:
                    raise Unroutable(
                        f"no queue is bound to {route.exchange or '(default)'}/"
                        f"{route.routing_key}; is the service that consumes it running?"
                    ) from None
                except aiormq.exceptions.ChannelAccessRefused as error:
                    await self._renew_publish_channel(publisher)
                    raise PublishRefused(
                        f"the broker refused a publish to {route.exchange}/"
                        f"{route.routing_key}: {error}"
                    ) from None
                except aiormq.exceptions.ChannelNotFoundEntity:
                    await self._renew_publish_channel(publisher)
                    raise DoorClosed(
                        f"there is no exchange {route.exchange!r} on the broker: a namespace's "
                        "door opens when an admin sets its quota or its user trades a key, a "
                        "PC's when it trades its key"
                    ) from None
            except _RETRYABLE as error:
                if isinstance(error, _NoConfirm):  # not past the deadline, even on a stuck node
                    with contextlib.suppress(ConnectionError, TimeoutError):  # it gets new ones
                        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                            await self._renew_publish_channel(publisher)
                if time.monotonic() + delay_s >= deadline:
                    raise BrokerUnavailable(
                        f"no publisher confirm from the broker within {timeout_s:g} s "
                        f"({error!r}); the message to {route.routing_key} may not be stored"
                    ) from None
                log.debug("publish to %s failed (%r); retrying", route.routing_key, error)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 1.0)
                continue
            if not isinstance(confirm, Basic.Ack):  # pragma: no cover - confirms are always on
                raise BrokerUnavailable(f"no confirm for the message to {route.routing_key}")
            return
