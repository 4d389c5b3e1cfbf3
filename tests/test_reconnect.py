"""A consumer and a publisher survive the broker closing their connections, losing nothing."""

from __future__ import annotations

import asyncio

from bus import names
from bus.codec import Delivery
from bus.connection import Bus
from bus.consumer import Consumer
from bus.journal import Journal
from bus.topology import QueueSpec
from idlecloud.dev.services import BrokerInfo, rabbitmqctl, restart_broker
from schemas import DeployRequest
from schemas.journal import Entry, JournalMarker

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


async def test_journal_appends_made_across_a_broker_restart_are_all_read_back(
    broker: BrokerInfo, unique: str
) -> None:
    """Appends go on while the broker restarts; every confirmed one is read back. Right
    after its boot a broker confirms a publish to a stream that has not recovered yet and
    drops it (RabbitMQ 3.10), so the bus publishes only once its restore has declared the
    journal again (``Bus.restored``)."""
    instance = f"restart{unique}"
    read: list[int] = []

    def apply(entry: Entry) -> None:
        if isinstance(entry.message, JournalMarker) and entry.message.instance == instance:
            read.append(entry.message.seq)

    journal = Journal(apply, instance=instance)
    appended: list[int] = []
    restarted = asyncio.Event()
    async with Bus(broker.url, connection_name="journal across a restart") as bus:
        await journal.start(bus)

        async def append_all() -> None:
            after_restart = 0
            for seq in range(10_000):  # bounded: the restart takes seconds, not minutes
                await journal.append(JournalMarker(instance=instance, seq=seq), timeout_s=120)
                appended.append(seq)
                after_restart += restarted.is_set()
                if after_restart >= 20:
                    return
                await asyncio.sleep(0.01)

        appending = asyncio.create_task(append_all())
        await wait_until(lambda: len(read) >= 10, 20, "the first appends read back")
        await asyncio.to_thread(restart_broker)
        restarted.set()
        await appending
        await wait_until(lambda: len(read) >= len(appended), 30, "every append read back")
    assert bus.reconnects >= 1
    assert sorted(set(read)) == appended  # none lost; one retried across the drop may repeat
