"""Typed consumers: validate every delivery, hand good ones over, dead-letter the rest.

A :class:`Consumer` never crashes on input, and never loops on a message. A body that is
too large, of an unknown schema or version, invalid for its schema, or that names an
owner other than its routing key's is republished on the queue's dead-letter route
(:func:`bus.names.dead_letter_route`: one its owner may write to) with the reason and the
original headers, under publisher confirms, and only then acked. A handler that raises is
treated the same way, with the traceback. Two failures are told apart: a broker that is
away (the message stays unacked and comes back once it is) and a broker that refuses
the dead-letter publish (the message is rejected for good, so the queue's own
dead-letter arguments take it). Every platform and PC queue has a delivery limit
(:data:`bus.topology.DELIVERY_LIMIT`), so a message that keeps coming back is
dead-lettered by the broker itself.

:meth:`Consumer.stop` stops taking deliveries, lets in-flight handlers finish within a
grace period, and cancels the rest: their messages were never acked, so they go back to the
queue when the channel closes. Nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar, cast

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel
from pamqp.commands import Basic

from bus import names
from bus.codec import MAX_BODY_BYTES, Delivery, decode, delivery_of
from bus.connection import PUBLISH_FAILURES, TRANSIENT_ERRORS, Bus
from bus.errors import BrokerUnavailable, InvalidMessage, PublishRefused
from bus.topology import QueueSpec
from schemas import Message, utc_now

__all__ = [
    "DEAD_BODY_LIMIT_BYTES",
    "DEAD_REASON_HEADER",
    "Consumer",
    "Handler",
    "QueueConsumer",
    "dead_letter_headers",
    "settle",
]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
Handler = Callable[[M, Delivery], Awaitable[None]]

#: Header naming why a message was dead-lettered.
DEAD_REASON_HEADER = "idlecloud-dead-reason"
#: A dead-lettered body is cut to this size; the original size is kept in a header.
DEAD_BODY_LIMIT_BYTES = 64 * 1024
_TRACEBACK_LIMIT_CHARS = 8192
_MAX_KEPT_HEADERS = 64


def dead_letter_headers(delivery: Delivery, queue: str, reason: str) -> dict[str, Any]:
    """The original headers (scalar ones only) plus why, from where, and when."""
    kept: dict[str, Any] = {}
    for key, value in list(delivery.headers.items())[:_MAX_KEPT_HEADERS]:
        if isinstance(key, str) and len(key) <= 128 and isinstance(value, str | int | float):
            kept[key] = value[:1024] if isinstance(value, str) else value
    kept.update(
        {
            DEAD_REASON_HEADER: reason[:1024],
            "idlecloud-dead-queue": queue,
            "idlecloud-dead-at": utc_now().isoformat(),
            "idlecloud-original-exchange": delivery.exchange,
            "idlecloud-original-routing-key": delivery.routing_key[:255],
            "idlecloud-original-body-bytes": len(delivery.body),
        }
    )
    return kept


class QueueConsumer:
    """Consumes one queue with manual acks: in-flight tracking and graceful stop.

    Subclasses implement :meth:`_process`, which must ack or nack the delivery.
    """

    def __init__(self, spec: QueueSpec, *, prefetch: int) -> None:
        self.spec = spec
        self.name = spec.name
        self._prefetch = prefetch
        self._bus: Bus | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._stopping = False
        #: Only check that the queue exists (a credential that may read but not configure).
        self.passive = False

    @property
    def bus(self) -> Bus:
        """The bus this consumer was started on."""
        if self._bus is None:
            raise RuntimeError(f"consumer of {self.name} was not started")
        return self._bus

    async def start(self, bus: Bus) -> None:
        """Declare the queue and its bindings, and start consuming (again, after a stop)."""
        self._bus = bus
        self._stopping = False
        self._channel = await bus.channel(prefetch=self._prefetch)
        self._queue = await self.spec.declare(self._channel, passive=self.passive)
        self._consumer_tag = await self._queue.consume(self._on_message)

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop taking deliveries, finish in-flight ones within ``grace_s``, requeue the rest."""
        self._stopping = True
        if self._channel is None:
            return
        if self._queue is not None and self._consumer_tag is not None:
            try:
                await self._queue.cancel(self._consumer_tag)
            except TRANSIENT_ERRORS:
                log.debug("consumer of %s already gone", self.name)
        if self._inflight:
            _done, pending = await asyncio.wait(set(self._inflight), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "%s: %d handlers did not finish within %g s; their messages are requeued",
                    self.name,
                    len(pending),
                    grace_s,
                )
                await asyncio.gather(*pending, return_exceptions=True)
        await self._settle_finished()
        await self._channel.close()
        self._channel = None

    async def _settle_finished(self) -> None:
        """Before the channel closes: send settlements a subclass has held back."""

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        if self._stopping:
            await settle(incoming.nack(requeue=True))
            return
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            await self._process(incoming)
        finally:
            self._inflight.discard(task)

    async def _process(self, incoming: AbstractIncomingMessage) -> None:
        raise NotImplementedError


class Consumer(QueueConsumer, Generic[M]):
    """Hands valid messages of ``accepts`` to a handler; dead-letters everything else."""

    def __init__(
        self,
        spec: QueueSpec,
        accepts: Sequence[type[M]],
        handler: Handler[M],
        *,
        prefetch: int = 10,
        max_body_bytes: int = MAX_BODY_BYTES,
        check_route: bool = True,
    ) -> None:
        """Consume ``spec`` with ``handler``."""
        super().__init__(spec, prefetch=prefetch)
        self._accepts: dict[str, type[Message]] = {cls.schema_name: cls for cls in accepts}
        self._handler = handler
        self._max_body_bytes = max_body_bytes
        self._check_route = check_route
        self.handled = 0
        self.dead_lettered = 0

    async def _process(self, incoming: AbstractIncomingMessage) -> None:
        delivery = delivery_of(incoming)
        try:
            message = decode(
                delivery,
                self._accepts,
                max_body_bytes=self._max_body_bytes,
                check_route=self._check_route,
            )
            await self._handler(cast(M, message), delivery)  # decode returns an `accepts` type
        except InvalidMessage as error:
            await self._dead_letter(incoming, delivery, error.reason)
            return
        except PUBLISH_FAILURES as error:
            log.warning("%s: lost the broker while handling (%r); requeued", self.name, error)
            await settle(incoming.nack(requeue=True))
            return
        except Exception as error:
            log.exception("%s: handler failed; dead-lettering the message", self.name)
            reason = f"handler failed: {type(error).__name__}: {error}"
            await self._dead_letter(incoming, delivery, reason, traceback.format_exc())
            return
        self.handled += 1
        await settle(incoming.ack())

    async def _dead_letter(
        self,
        incoming: AbstractIncomingMessage,
        delivery: Delivery,
        reason: str,
        trace: str = "",
    ) -> None:
        queue = self.spec.name
        headers = dead_letter_headers(delivery, queue, reason)
        if trace:
            headers["idlecloud-traceback"] = trace[-_TRACEBACK_LIMIT_CHARS:]
        properties = Basic.Properties(
            content_type=incoming.content_type,
            delivery_mode=2,
            message_id=delivery.message_id,
            headers=headers,
        )
        route = names.dead_letter_target(queue)
        try:
            await self.bus.publish_raw(
                route, delivery.body[:DEAD_BODY_LIMIT_BYTES], properties, timeout_s=10.0
            )
        except PublishRefused as error:  # for good: the queue's own dead-letter route takes it
            log.error("%s: may not dead-letter (%s); rejected: %s", queue, error, reason)
            await settle(incoming.reject(requeue=False))
            return
        except BrokerUnavailable as error:  # it comes back, up to the queue's delivery limit
            log.warning("%s: could not dead-letter (%s); requeued", queue, error)
            await settle(incoming.nack(requeue=True))
            return
        log.info("%s: dead-lettered a message: %s", queue, reason)
        self.dead_lettered += 1
        await settle(incoming.ack())


async def settle(settlement: Awaitable[None]) -> None:
    """Ack or nack; if the channel is gone the broker redelivers, which is what we want."""
    try:
        await settlement
    except TRANSIENT_ERRORS as error:
        log.debug("could not settle a delivery (%r); the broker will redeliver it", error)
