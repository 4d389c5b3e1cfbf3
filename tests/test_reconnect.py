"""A consumer and a publisher survive the broker closing their connections, losing nothing."""

from __future__ import annotations

import asyncio

from bus import names
from bus.codec import Delivery
from bus.connection import Bus
from bus.consumer import Consumer
from bus.topology import QueueSpec
from idlecloud.dev.services import BrokerInfo, rabbitmqctl
from schemas import DeployRequest

from .examples import deploy
from .helpers import open_namespace, wait_until

MESSAGES = 400


async def test_consumer_and_publisher_survive_close_all_connections(
    broker: BrokerInfo, unique: str
) -> None:
    received: set[str] = set()
    deliveries = 0

    async def handle(message: DeployRequest, _delivery: Delivery) -> None:
        nonlocal deliveries
        deliveries += 1
        received.add(message.request_id)

    spec = QueueSpec.quorum(
        names.service_queue(f"reconnect-{unique}", "requests"),
        (names.REQUESTS_EXCHANGE, f"ns.t{unique}.#"),
    )
    async with (
        Bus(broker.url, connection_name="consumer") as consumer_bus,
        Bus(broker.url, connection_name="publisher") as publisher_bus,
    ):
        consumer = Consumer(spec, [DeployRequest], handle, prefetch=20)
        await consumer.start(consumer_bus)
        await open_namespace(publisher_bus, f"t{unique}")
        sent: list[str] = []

        async def publish_all() -> None:
            for index in range(MESSAGES):
                message = deploy(f"t{unique}", "a", f"req-{index:06d}")
                await publisher_bus.publish(message, timeout_s=60)
                sent.append(message.request_id)
                await asyncio.sleep(0.002)

        publishing = asyncio.create_task(publish_all())
        await wait_until(lambda: len(received) >= MESSAGES // 4, what="a quarter delivered")
        await asyncio.to_thread(
            rabbitmqctl, "close_all_connections", "-p", broker.vhost, "test: broker closes all"
        )
        await publishing
        await wait_until(lambda: received == set(sent), timeout_s=60, what="every message")
        await consumer.stop()

    assert consumer_bus.reconnects >= 1, "the consumer's connection was never re-established"
    assert publisher_bus.reconnects >= 1, "the publisher's connection was never re-established"
    assert len(sent) == MESSAGES
    assert received == set(sent)
    assert deliveries >= MESSAGES  # at-least-once: a message may come twice, never zero times
