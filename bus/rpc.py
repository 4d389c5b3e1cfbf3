"""Request/reply over the bus: the requester owns its reply queue, the platform answers.

A requester declares a private reply queue named for its own owner
(``ns.alice.reply.<token>``) and publishes a request with ``reply_to`` and a correlation
id. The server answers through the default exchange, which only the platform may use, and
only to a reply queue owned by the request's own owner, so a request cannot aim a reply at
someone else's queue.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel

from bus import names
from bus.codec import Delivery, decode, delivery_of
from bus.connection import Bus
from bus.consumer import Consumer
from bus.errors import InvalidMessage, RpcTimeout
from bus.topology import QueueSpec
from schemas import Message, Owner

__all__ = ["RpcClient", "RpcServer"]

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)


def _check_reply_to(reply_to: str | None, owner: Owner) -> str:
    expected_prefix = names.reply_queue(owner, "")
    if not reply_to or not reply_to.startswith(expected_prefix) or reply_to == expected_prefix:
        raise InvalidMessage(
            f"reply_to {str(reply_to)[:255]!r} is not a reply queue of {owner} "
            f"(expected {expected_prefix}<token>)"
        )
    return reply_to


class RpcServer(Consumer[M]):
    """A consumer that answers each request with the message its handler returns.

    A request without a valid ``reply_to`` for its owner is dead-lettered unhandled.
    """

    def __init__(
        self,
        spec: QueueSpec,
        accepts: Sequence[type[M]],
        handler: Callable[[M, Delivery], Awaitable[Message]],
        *,
        prefetch: int = 10,
    ) -> None:
        super().__init__(spec, accepts, self._answer, prefetch=prefetch)
        self._answerer = handler

    async def _answer(self, request: M, delivery: Delivery) -> None:
        reply_to = _check_reply_to(delivery.reply_to, request.owner())
        reply = await self._answerer(request, delivery)
        await self.bus.publish(
            reply,
            route=names.Route(names.DEFAULT_EXCHANGE, reply_to),
            correlation_id=delivery.correlation_id,
            timeout_s=10.0,
        )


class RpcClient:
    """Sends requests and awaits their replies on a reply queue of its owner's."""

    def __init__(self, bus: Bus, owner: Owner) -> None:
        self._bus = bus
        self.reply_queue = names.reply_queue(owner, uuid.uuid4().hex[:16])
        self._pending: dict[str, asyncio.Future[Delivery]] = {}
        self._channel: AbstractRobustChannel | None = None

    async def start(self) -> RpcClient:
        """Declare the reply queue and listen on it."""
        self._channel = await self._bus.channel()
        queue = await QueueSpec.private(self.reply_queue).declare(self._channel)
        await queue.consume(self._on_reply, no_ack=True)
        return self

    async def stop(self) -> None:
        """Close the reply queue; calls still waiting fail with RpcTimeout."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _on_reply(self, incoming: AbstractIncomingMessage) -> None:
        future = self._pending.get(incoming.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(delivery_of(incoming))

    async def call(self, request: Message, expect: type[R], *, timeout_s: float = 10.0) -> R:
        """Send ``request`` on its route and return the reply.

        Args:
            request: the request; it goes where :func:`bus.names.route` says.
            expect: the schema of the reply.
            timeout_s: how long to wait for the reply.

        Raises:
            Unroutable: no service consumes this kind of request.
            RpcTimeout: no reply within ``timeout_s``.
            InvalidMessage: the reply was not a valid ``expect``.
        """
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        route = names.route(request)
        try:
            await self._bus.publish(
                request,
                mandatory=True,
                reply_to=self.reply_queue,
                correlation_id=correlation_id,
                timeout_s=timeout_s,
            )
            async with asyncio.timeout(timeout_s):
                delivery = await future
        except TimeoutError:
            raise RpcTimeout(
                f"no answer to {request.schema_name} on {route.routing_key} within "
                f"{timeout_s:g} s; is the service that handles it running?"
            ) from None
        finally:
            self._pending.pop(correlation_id, None)
        reply = decode(delivery, {expect.schema_name: expect})
        assert isinstance(reply, expect)
        return reply
