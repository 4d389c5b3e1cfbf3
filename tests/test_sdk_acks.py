"""The worker's acks leave in the order they were decided, however long each send takes.

aiormq queues frames on a bounded write queue whose waiting writers a later writer can
pass; a single ack of a tag that then reaches the broker after a multiple ack covering it
is an "unknown delivery tag": the broker closes the channel and delivers every unacked
task again (the duplicates ``tests/test_sdk.py`` saw about one run in six). The broker
cannot be made to show that race on demand, so here a stand-in channel (named so: it only
records frames) makes the first sends slow and the later ones fast, and the frames must
still arrive in order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

from aio_pika.abc import AbstractIncomingMessage

from bus.sdk.batcher import AckBatcher


@dataclass(eq=False)
class StandInChannel:
    """Records each settlement frame; the first ``slow`` sends take 50 ms, the rest none."""

    slow: int
    frames: list[tuple[str, int, bool]] = field(default_factory=list)
    is_closed: bool = False
    sends: int = 0

    async def _send(self, frame: tuple[str, int, bool]) -> None:
        self.sends += 1
        if self.sends <= self.slow:
            await asyncio.sleep(0.05)
        self.frames.append(frame)

    async def basic_ack(self, tag: int, multiple: bool = False) -> None:
        await self._send(("ack", tag, multiple))

    async def basic_nack(self, tag: int, requeue: bool = True) -> None:
        await self._send(("nack", tag, requeue))


@dataclass
class Delivery:
    channel: StandInChannel
    delivery_tag: int


def delivery(channel: StandInChannel, tag: int) -> AbstractIncomingMessage:
    return cast(AbstractIncomingMessage, Delivery(channel, tag))


def broker_view(frames: list[tuple[str, int, bool]], delivered: int) -> list[int]:
    """What a broker makes of the frames in arrival order: the tags settled, or an
    AssertionError at the first unknown delivery tag."""
    outstanding = set(range(1, delivered + 1))
    settled: list[int] = []
    for kind, tag, flag in frames:
        assert tag in outstanding, f"unknown delivery tag {tag} ({kind})"
        covered = {t for t in outstanding if t <= tag} if kind == "ack" and flag else {tag}
        outstanding -= covered
        settled.extend(sorted(covered))
    return settled


async def test_a_single_ack_never_arrives_after_a_multiple_ack_that_covers_it() -> None:
    channel = StandInChannel(slow=1)
    acks = AckBatcher()
    messages: dict[int, Any] = {tag: delivery(channel, tag) for tag in range(1, 7)}
    for message in messages.values():
        acks.delivered(message)
    acks.ack(messages[2])  # behind 1, still running: acked alone (a slow send)
    await asyncio.sleep(0)  # that loop turn's flush
    acks.ack(messages[1])
    acks.ack(messages[3])  # now 1..3 are done: one multiple ack of 3 (a fast send)
    await asyncio.sleep(0)
    await acks.nack(messages[5])  # a nack waits for the acks decided before it
    acks.ack(messages[4])
    acks.ack(messages[6])
    await asyncio.sleep(0.3)
    assert channel.frames[:3] == [("ack", 2, False), ("ack", 3, True), ("nack", 5, True)]
    assert broker_view(channel.frames, delivered=6) == [2, 1, 3, 5, 4, 6]


async def test_a_nacked_delivery_is_never_acked_too() -> None:
    channel = StandInChannel(slow=0)
    acks = AckBatcher()
    messages = [delivery(channel, tag) for tag in (1, 2, 3)]
    for message in messages:
        acks.delivered(message)
    await acks.nack(messages[1])  # 2 goes back to the queue while 1 still runs
    acks.ack(messages[2])
    await asyncio.sleep(0.05)
    acks.ack(messages[0])
    await asyncio.sleep(0.05)
    assert channel.frames == [("nack", 2, True), ("ack", 3, False), ("ack", 1, True)]
    assert broker_view(channel.frames, delivered=3) == [2, 3, 1]


async def test_acks_wait_the_linger_go_at_once_when_half_the_window_waits_and_drain() -> None:
    """Held acks leave together after the linger; half a prefetch window of finished
    deliveries leaves at once (the broker would stop delivering); drain sends the rest."""
    channel = StandInChannel(slow=0)
    acks = AckBatcher(linger_s=0.05, most=3)
    messages = [delivery(channel, tag) for tag in range(1, 8)]
    for message in messages:
        acks.delivered(message)
    acks.ack(messages[0])
    acks.ack(messages[1])
    await asyncio.sleep(0.01)
    assert channel.frames == []  # held: the linger has not passed
    await asyncio.sleep(0.08)
    assert channel.frames == [("ack", 2, True)]  # one ack for both
    for message in messages[2:5]:  # three finished: half of a window of six
        acks.ack(message)
    await asyncio.sleep(0)
    assert channel.frames[1:] == [("ack", 5, True)]  # at once, not after the linger
    acks.ack(messages[5])
    await acks.drain()
    assert channel.frames[2:] == [("ack", 6, True)]
    assert broker_view(channel.frames, delivered=7) == [1, 2, 3, 4, 5, 6]
    alone = StandInChannel(slow=0)
    one = AckBatcher.lingering(1)  # a window of one: the broker waits for each ack
    one.delivered(delivery(alone, 1))
    one.ack(delivery(alone, 1))
    await asyncio.sleep(0)
    assert alone.frames == [("ack", 1, True)]
