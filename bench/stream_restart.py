"""Publishes confirmed right after a broker's boot: which kinds of queue keep them.

Why ``Bus.publish`` waits for its connection's restore (``Bus.restored``): RabbitMQ 3.10
takes connections before its streams have recovered, and in that window it may confirm
a publish to a stream and drop it. This measures it on the broker the tests use (the same
helper starts it, in a scratch vhost): a stream, a quorum queue and a classic queue are
declared; the broker's application is stopped and started (``rabbitmqctl stop_app`` /
``start_app``), and as soon as it takes a connection, ``--messages`` persistent messages
are published to each with publisher confirms. Once it has booted, what each holds is
counted. With ``--wait-for-stream`` the publisher first waits until a passive declare of
the stream succeeds (what a channel's restore does before ``Bus.publish`` goes on).

Usage: python bench/stream_restart.py [--trials 3] [--messages 40] [--wait-for-stream]
Prints, per trial and kind, the messages confirmed and kept.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import aiormq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from idlecloud.dev.services import rabbitmqctl, scratch_vhost  # noqa: E402

KINDS = {"stream": "stream", "quorum": "quorum", "classic": "classic"}


async def _declare(url: str, prefix: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for kind in KINDS.values():
            await channel.declare_queue(f"{prefix}.{kind}", durable=True,
                                        arguments={"x-queue-type": kind})  # fmt: skip


async def _connect_soon(url: str, deadline_s: float) -> aio_pika.abc.AbstractConnection:
    """The first connection the booting broker takes (tried every 50 ms)."""
    until = time.monotonic() + deadline_s
    while True:
        try:
            return await aio_pika.connect(url, timeout=2)
        except (TimeoutError, OSError, aiormq.exceptions.AMQPError):
            if time.monotonic() > until:
                raise
            await asyncio.sleep(0.05)


async def _stream_ready(connection: aio_pika.abc.AbstractConnection, name: str) -> None:
    while True:  # a passive miss closes the channel: a fresh one each time
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
            return
        except aiormq.exceptions.AMQPError:
            await asyncio.sleep(0.05)
        finally:
            if not channel.is_closed:
                await channel.close()


async def _publish_all(url: str, prefix: str, messages: int, wait: bool) -> dict[str, int]:
    confirmed = dict.fromkeys(KINDS, 0)
    connection = await _connect_soon(url, 120)
    async with connection:
        if wait:
            await _stream_ready(connection, f"{prefix}.stream")
        for kind, queue_type in KINDS.items():
            channel = await connection.channel(publisher_confirms=True)
            for index in range(messages):
                try:
                    await channel.default_exchange.publish(
                        aio_pika.Message(str(index).encode(), delivery_mode=2),
                        routing_key=f"{prefix}.{queue_type}",
                    )
                    confirmed[kind] += 1
                except (aiormq.exceptions.AMQPError, aio_pika.exceptions.DeliveryError):
                    if channel.is_closed:
                        channel = await connection.channel(publisher_confirms=True)
    return confirmed


async def _kept(url: str, prefix: str, messages: int) -> dict[str, int]:
    kept = {}
    connection = await _connect_soon(url, 60)
    async with connection:
        for kind in ("quorum", "classic"):
            channel = await connection.channel()
            queue = await channel.declare_queue(f"{prefix}.{kind}", passive=True)
            kept[kind] = queue.declaration_result.message_count or 0
            await channel.close()
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)
        stream = await channel.declare_queue(f"{prefix}.stream", passive=True)
        seen = 0
        async with stream.iterator(arguments={"x-stream-offset": "first"}) as reading:
            try:
                async with asyncio.timeout(3):
                    async for message in reading:
                        await message.ack()
                        seen += 1
                        if seen >= messages:
                            break
            except TimeoutError:
                pass
        kept["stream"] = seen
    return kept


async def trial(url: str, messages: int, wait: bool) -> tuple[dict[str, int], dict[str, int]]:
    prefix = f"bench.restart.{uuid.uuid4().hex[:8]}"
    await _declare(url, prefix)
    await asyncio.to_thread(rabbitmqctl, "stop_app")
    starting = asyncio.create_task(asyncio.to_thread(rabbitmqctl, "start_app"))
    confirmed = await _publish_all(url, prefix, messages, wait)
    await starting
    await asyncio.to_thread(rabbitmqctl, "await_startup", "--timeout", "120")
    return confirmed, await _kept(url, prefix, messages)


async def main(url: str, trials: int, messages: int, wait: bool) -> None:
    lost = dict.fromkeys(KINDS, 0)
    print(f"trials: {trials}, {messages} confirmed publishes per kind, as soon as the broker "
          f"takes a connection{', the stream awaited first' if wait else ''}")  # fmt: skip
    for number in range(1, trials + 1):
        confirmed, kept = await trial(url, messages, wait)
        for kind in KINDS:
            lost[kind] += max(0, confirmed[kind] - kept[kind])
        print(f"trial {number}: " + ", ".join(
            f"{kind} {kept[kind]}/{confirmed[kind]} kept" for kind in KINDS))  # fmt: skip
    for kind in KINDS:
        print(f"{kind}_confirmed_and_lost: {lost[kind]} (of {trials * messages})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--wait-for-stream", action="store_true")
    arguments = parser.parse_args()
    logging.getLogger("aio_pika").setLevel(logging.CRITICAL)  # each refused connect, logged
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    with scratch_vhost("bench") as broker:
        asyncio.run(main(broker.url, arguments.trials, arguments.messages,
                         arguments.wait_for_stream))  # fmt: skip
