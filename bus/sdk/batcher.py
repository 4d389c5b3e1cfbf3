"""Coalescing results and acks, so a worker sends fewer frames than it gets tasks.

Many small tasks finish in the same turn of the event loop. Instead of one result message
(and one publisher confirm) per task, a worker hands each task's outcomes to a
:class:`ResultBatcher`, which sends everything bound for the same client at the end of the
loop turn, or as soon as ``max_outcomes`` have gathered, as one message. Each caller waits
for the confirm of the message that carried its outcomes before it acks its delivery, so
at-least-once holds exactly as with one message per task.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from aio_pika.abc import AbstractIncomingMessage
from aiormq.abc import AbstractChannel

from bus import names
from bus.connection import Bus
from bus.consumer import settle
from bus.sdk.protocol import Outcome, encode_outcomes

__all__ = ["ACK_LINGER_S", "AckBatcher", "ResultBatcher"]

#: How long a finished delivery's ack may wait to be sent with later ones.
ACK_LINGER_S = 0.05

#: A delivery tag and how to settle it.
_Settlement = tuple[int, Literal["ack", "ack multiple", "nack"]]


class _Background:
    """Keeps a reference to each task it starts until the task is done."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


@dataclass
class _Gathering:
    outcomes: list[Outcome] = field(default_factory=list)
    sent: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ResultBatcher:
    """Sends the outcomes bound for each client together, once per loop turn."""

    def __init__(
        self, bus: Bus, namespace: str, *, node: str | None = None, max_outcomes: int = 1000
    ) -> None:
        self._bus = bus
        self._node = node
        self._exchange = names.ns_results_exchange(namespace)
        self._max_outcomes = max_outcomes
        self._gathering: dict[str, _Gathering] = {}
        self._background = _Background()

    async def send(self, reply_to: str, outcomes: list[Outcome]) -> None:
        """Send ``outcomes`` to client ``reply_to``; return once the broker confirmed them.

        Raises:
            BrokerUnavailable: as :meth:`Bus.publish_raw` does, for every caller whose
                outcomes were in the message.
        """
        gathering = self._gathering.get(reply_to)
        if gathering is None:
            gathering = self._gathering[reply_to] = _Gathering()
            asyncio.get_running_loop().call_soon(self._flush, reply_to, gathering)
        gathering.outcomes.extend(outcomes)
        if len(gathering.outcomes) >= self._max_outcomes:
            self._flush(reply_to, gathering)
        await asyncio.shield(gathering.sent)

    def _flush(self, reply_to: str, gathering: _Gathering) -> None:
        if self._gathering.get(reply_to) is not gathering:
            return  # already sent because it filled up
        del self._gathering[reply_to]
        self._background.start(self._publish(reply_to, gathering))

    async def _publish(self, reply_to: str, gathering: _Gathering) -> None:
        try:
            first = gathering.outcomes[0].task_id
            body, properties = encode_outcomes(gathering.outcomes, first, self._node)
            await self._bus.publish_raw(names.Route(self._exchange, reply_to), body, properties)
        except BaseException as error:
            gathering.sent.set_exception(error)
            if not isinstance(error, Exception):
                raise
        else:
            gathering.sent.set_result(None)


class AckBatcher:
    """Acks finished deliveries in runs: one ``basic.ack(multiple)`` per ``linger_s``.

    Delivery tags on a channel only grow, so once every delivery up to a tag has finished,
    a single ack with ``multiple`` settles them all. Acks wait up to ``linger_s`` (none: to
    the end of the loop turn) or until ``most`` deliveries have finished: an ack to a quorum
    queue is a Raft command, so one ack for a run of tasks halves what the broker does per
    task done one at a time. A finished delivery not yet acked is answered already; if its
    worker dies first, the broker delivers it again and the client drops the second result.
    A delivery that finishes behind one still running is acked alone, so a long task never
    holds finished ones (and the prefetch window) hostage. A nack is sent at once.
    Deliveries of a channel that closed are forgotten: the broker requeues them.

    Every ack and nack of a channel leaves in the order it was decided, one after the
    other (:meth:`_send`): the channel's write queue lets a late writer pass one that
    waits, and an ack alone of a tag that reaches the broker after a multiple ack that
    already covered it is an unknown delivery tag, which closes the channel and makes
    the broker deliver every unacked task again.
    """

    def __init__(self, *, linger_s: float = 0.0, most: int | None = None) -> None:
        """Ack finished deliveries after ``linger_s``, or at once when ``most`` wait (keep
        it under the channel's prefetch, or the broker stops delivering meanwhile)."""
        self._linger_s = linger_s
        self._most = max(1, most) if most is not None else math.inf
        self._waiting = 0
        self._order: dict[AbstractChannel, deque[int]] = {}
        self._finished: dict[AbstractChannel, set[int]] = {}
        self._sending: dict[AbstractChannel, asyncio.Task[None]] = {}
        self._scheduled: asyncio.Handle | None = None
        self._background = _Background()

    @classmethod
    def lingering(cls, prefetch: int) -> AckBatcher:
        """Acks held :data:`ACK_LINGER_S`, or until half of a ``prefetch`` window waits."""
        return cls(linger_s=ACK_LINGER_S, most=prefetch // 2)

    def delivered(self, message: AbstractIncomingMessage) -> None:
        """Note a delivery as soon as it arrives (tags are noted in delivery order)."""
        channel = message.channel
        if channel not in self._order:
            self._order[channel] = deque()
            self._finished[channel] = set()
        self._order[channel].append(_tag(message))

    def ack(self, message: AbstractIncomingMessage) -> None:
        """Mark a delivery done; it is acked with the run it completes."""
        finished = self._finished.get(message.channel)
        if finished is None:
            return
        finished.add(_tag(message))
        self._waiting += 1
        if self._waiting >= self._most:
            self._flush()
        elif self._scheduled is None:
            loop = asyncio.get_running_loop()
            self._scheduled = (
                loop.call_later(self._linger_s, self._flush)
                if self._linger_s > 0
                else loop.call_soon(self._flush)
            )

    async def drain(self) -> None:
        """Send every ack decided so far and wait until they are written."""
        self._flush()
        sending = [task for task in self._sending.values() if not task.done()]
        if sending:
            await asyncio.wait(sending)

    async def nack(self, message: AbstractIncomingMessage) -> None:
        """Send it back to the queue now (after the acks decided before it)."""
        channel, tag = message.channel, _tag(message)
        order = self._order.get(channel)
        if order is not None and tag in order:
            order.remove(tag)  # settled by the nack: never acked
        await asyncio.shield(self._send(channel, [(tag, "nack")]))

    def _flush(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._waiting = 0
        for channel in list(self._order):
            order, finished = self._order[channel], self._finished[channel]
            if channel.is_closed:
                del self._order[channel], self._finished[channel]
                self._sending.pop(channel, None)
                continue
            settlements: list[_Settlement] = []
            highest = None
            while order and order[0] in finished:
                highest = order.popleft()
                finished.discard(highest)
            if highest is not None:
                settlements.append((highest, "ack multiple"))
            for tag in sorted(finished):  # done, but behind a delivery still running: alone
                order.remove(tag)
                settlements.append((tag, "ack"))
            finished.clear()
            if settlements:
                self._send(channel, settlements)

    def _send(self, channel: AbstractChannel, settlements: list[_Settlement]) -> asyncio.Task[None]:
        """Send ``settlements`` after every one sent before on ``channel``."""
        before = self._sending.get(channel)

        async def in_order() -> None:
            if before is not None and not before.done():
                await asyncio.wait({before})
            for tag, kind in settlements:
                if kind == "nack":
                    await settle(channel.basic_nack(tag, requeue=True))
                else:
                    await settle(channel.basic_ack(tag, multiple=kind == "ack multiple"))

        task = self._background.start(in_order())
        self._sending[channel] = task
        return task


def _tag(message: AbstractIncomingMessage) -> int:
    tag = message.delivery_tag
    assert tag is not None, "a delivery without a tag cannot be settled"
    return tag
