"""What the broker spends per message on the paths placement and the PCs use at scale.

On a fresh vhost of the RabbitMQ the tests use, with 1,000 PCs' doors and quorum command
queues (as ``bench/scale_pcs.py`` declares them), and the broker's own CPU read from
``/proc`` around each round:

* **commands**: 5,000 confirmed publishes of 6 KB (a ``StartReplicas`` of five) to the
  1,000 command queues, a consumer on each; the first round is every queue's first
  message ever. Publishes that wait for the socket (aiormq's ``wait``, the default) and
  that do not (what ``Bus.publish`` does), alternated.
* **beats**: 5,000 heartbeats through the PCs' doors under confirms into a queue bound
  as placement's is, acked one by one or 100 at a time (``multiple``), alternated.
* **tokens**: the auth service's minting of a replica's broker token, per token.

Usage: python bench/broker_costs.py [--rounds 2]
Prints per round the rate and the broker's CPU per message (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scale import broker_pid, cpu_s
from bench.scale_pcs import SyntheticPc, node_name
from bus import names
from bus.codec import encode
from bus.connection import Bus, broker_user_name
from bus.topology import QueueSpec, declare_door, declare_platform
from idlecloud.dev.services import create_vhost, delete_vhost, ensure_rabbitmq
from schemas import Amount, Owner
from services.auth.tokens import SigningKey, broker_token

PCS = 1000
MESSAGES = 5000


async def commands(url: str, rounds: int) -> None:
    """Confirmed publishes to the PCs' quorum command queues, waiting for the socket or not."""
    broker = broker_pid()
    async with Bus(url) as bus:
        channel = await bus.channel()
        delivered = [0]

        async def take(_message: AbstractIncomingMessage) -> None:
            delivered[0] += 1

        for index in range(PCS):
            name = node_name(index)
            spec = QueueSpec.quorum(
                names.node_commands_queue(name),
                (names.COMMANDS_EXCHANGE, names.node_command_keys(name)),
            )
            queue = await spec.declare(channel)
            await queue.consume(take, no_ack=True)
        publisher = await bus.channel()
        raw = cast(aiormq.Channel, await publisher.get_underlay_channel())
        body = b"x" * 6000
        for index in range(2 * rounds):
            wait = index % 2 == 0
            delivered[0] = 0
            before, started = cpu_s(broker), time.perf_counter()
            await asyncio.gather(*(
                raw.basic_publish(
                    body, exchange=names.COMMANDS_EXCHANGE, properties=Basic.Properties(
                        delivery_mode=2, user_id=bus.user_name),
                    routing_key=f"node.{node_name(n % PCS)}.start", wait=wait,
                )
                for n in range(MESSAGES)
            ))  # fmt: skip
            while delivered[0] < MESSAGES:  # noqa: ASYNC110 - a counter, 2 ms
                await asyncio.sleep(0.002)
            elapsed_s = time.perf_counter() - started
            first = " (every queue's first message)" if index == 0 else ""
            print(f"commands, {'waiting for' if wait else 'not waiting for'} the socket{first}: "
                  f"{MESSAGES / elapsed_s:.0f}/s, broker "
                  f"{(cpu_s(broker) - before) / MESSAGES * 1e3:.3f} ms a message")  # fmt: skip


async def beats(url: str, rounds: int) -> None:
    """Heartbeats through the doors into a queue bound as placement's, acked one by one or
    100 at a time."""
    broker = broker_pid()
    pcs = [SyntheticPc(node_name(index), Amount(4000, 8192), 1) for index in range(PCS)]
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=500)
        spec = QueueSpec.private(
            f"bench.events.{uuid.uuid4().hex[:6]}",
            *((names.EVENTS_EXCHANGE, key) for key in names.node_event_keys()),
        )
        queue = await spec.declare(channel)
        taken, held, together = [0], [], [False]

        async def take(message: AbstractIncomingMessage) -> None:
            taken[0] += 1
            if not together[0]:
                await message.ack()
                return
            held.append(message)
            if len(held) == 100:
                await held.pop().ack(multiple=True)
                held.clear()

        await queue.consume(take)
        publisher = await connection.channel()
        raw = cast(aiormq.Channel, await publisher.get_underlay_channel())
        user = broker_user_name(url)
        for index in range(2 * rounds):
            together[0] = index % 2 == 1
            sent = []
            for n in range(MESSAGES):
                beat = pcs[n % PCS].beat()
                body, properties = encode(beat)
                properties.user_id = user
                sent.append((body, properties, names.route(beat)))
            taken[0] = 0
            before, started = cpu_s(broker), time.perf_counter()
            for first in range(0, MESSAGES, 500):  # 500 confirms in flight at a time
                await asyncio.gather(*(
                    raw.basic_publish(body, exchange=route.exchange,
                                      routing_key=route.routing_key, properties=properties,
                                      wait=False)
                    for body, properties, route in sent[first : first + 500]
                ))  # fmt: skip
            while taken[0] < MESSAGES:  # noqa: ASYNC110 - a counter, 2 ms
                await asyncio.sleep(0.002)
            if held:
                await held.pop().ack(multiple=True)
                held.clear()
            elapsed_s = time.perf_counter() - started
            acks = "100 at a time" if together[0] else "one by one"
            print(f"beats through doors, acked {acks}: {MESSAGES / elapsed_s:.0f}/s, broker "
                  f"{(cpu_s(broker) - before) / MESSAGES * 1e3:.3f} ms a beat")  # fmt: skip
    finally:
        await connection.close()


def tokens(count: int = 2000) -> None:
    """A replica's broker token, as the auth service mints it."""
    key = SigningKey.generate()
    started = time.perf_counter()
    for index in range(count):
        broker_token(key, "rabbitmq", "replica", "alice", "/", key_id=f"app-1-{index:08x}",
                     app="app", ttl_s=600)  # fmt: skip
    print(f"replica tokens: {(time.perf_counter() - started) / count * 1e6:.1f} us a token "
          f"({count} minted)")  # fmt: skip


async def main(rounds: int) -> None:
    broker = create_vhost(f"bench-costs-{uuid.uuid4().hex[:8]}")
    try:
        async with Bus(broker.url) as bus:
            await declare_platform(bus)
            channel = await bus.channel()
            for index in range(PCS):
                await declare_door(channel, Owner.node(node_name(index)))
        await commands(broker.url, rounds)
        await beats(broker.url, rounds)
    finally:
        await asyncio.to_thread(delete_vhost, broker.vhost)
    tokens()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="of each kind, alternated")
    arguments = parser.parse_args()
    ensure_rabbitmq()
    asyncio.run(main(arguments.rounds))
