"""The journal and leadership on the real broker: replay, catch-up, reconnects, takeover."""

from __future__ import annotations

import asyncio

from bus.connection import Bus
from bus.devservices import BrokerInfo, rabbitmqctl
from bus.journal import Entry, Journal
from bus.leader import Leadership
from schemas import DeployRequest

from .examples import deploy
from .helpers import wait_until


def ours(entries: list[Entry], namespace: str) -> list[str]:
    return [
        entry.message.request_id
        for entry in entries
        if isinstance(entry.message, DeployRequest) and entry.message.namespace == namespace
    ]


async def test_a_late_reader_replays_everything_in_order_and_knows_when_it_caught_up(
    bus: Bus, unique: str
) -> None:
    writer_seen: list[Entry] = []
    writer = Journal(writer_seen.append)
    await writer.start(bus)
    namespace = f"j{unique}"
    sent = [deploy(namespace, "a", f"req-{index:06d}") for index in range(50)]
    for message in sent:
        await writer.append(message)
    late_seen: list[Entry] = []
    late = Journal(late_seen.append)
    await late.start(bus)
    marker_offset = await late.catch_up()
    assert ours(late_seen, namespace) == [m.request_id for m in sent]  # all, in order, before
    assert late.next_offset == marker_offset + 1
    offsets = [entry.offset for entry in late_seen]
    assert offsets == sorted(set(offsets))
    entry = await writer.append_and_read(deploy(namespace, "b", "req-last-000"))
    assert entry.offset > marker_offset and writer.next_offset == entry.offset + 1


async def test_after_a_reconnect_a_reader_neither_replays_nor_skips(
    broker: BrokerInfo, unique: str
) -> None:
    namespace = f"r{unique}"
    seen: list[Entry] = []
    async with (
        Bus(broker.url, connection_name="journal reader") as reader_bus,
        Bus(broker.url, connection_name="journal writer") as writer_bus,
    ):
        reader = Journal(seen.append)
        await reader.start(reader_bus)
        await reader.catch_up()
        writer = Journal(lambda _entry: None)
        await writer.start(writer_bus)
        for index in range(200):
            await writer.append(deploy(namespace, "a", f"req-{index:06d}"), timeout_s=60)
            if index == 100:
                await asyncio.to_thread(
                    rabbitmqctl, "close_all_connections", "-p", broker.vhost, "test: reconnect"
                )
        await wait_until(lambda: len(ours(seen, namespace)) >= 200, timeout_s=60, what="all")
        await reader.catch_up(timeout_s=60)
    assert reader_bus.reconnects >= 1
    offsets = [entry.offset for entry in seen]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))  # each offset once
    received = ours(seen, namespace)
    assert len(set(received)) == 200  # a publish retried across the reconnect may land twice


async def test_a_standby_takes_over_when_the_leader_dies_with_a_later_epoch(
    broker: BrokerInfo, unique: str
) -> None:
    service = f"svc{unique}"
    events: list[tuple[str, int | None]] = []

    def instance(name: str) -> tuple[Journal, Leadership]:
        journal = Journal(lambda _entry: None)

        async def elected(epoch: int) -> None:
            events.append((f"{name} elected", epoch))

        async def deposed() -> None:
            events.append((f"{name} deposed", None))

        return journal, Leadership(service, journal, elected, deposed, retry_s=0.2)

    first_bus = await Bus(broker.url, connection_name="leader a").connect()
    async with Bus(broker.url, connection_name="leader b") as second_bus:
        journal_a, leader_a = instance("a")
        await journal_a.start(first_bus)
        leader_a.start(first_bus)
        await wait_until(lambda: leader_a.leading, what="a to lead")
        journal_b, leader_b = instance("b")
        await journal_b.start(second_bus)
        leader_b.start(second_bus)
        await asyncio.sleep(1.0)
        assert not leader_b.leading  # the queue is a's
        await leader_a.stop()
        await first_bus.close()  # a dies: its exclusive queue goes with its connection
        await wait_until(lambda: leader_b.leading, timeout_s=5, what="b to take over")
        await leader_b.stop()
    first_epoch = dict(events)["a elected"]
    second_epoch = dict(events)["b elected"]
    assert first_epoch is not None and second_epoch is not None
    assert second_epoch > first_epoch
    assert [name for name, _ in events] == ["a elected", "a deposed", "b elected", "b deposed"]


async def test_a_leader_cut_off_by_the_broker_steps_down_and_leads_again_after_reconnecting(
    broker: BrokerInfo, unique: str
) -> None:
    epochs: list[int | None] = []

    async def elected(epoch: int) -> None:
        epochs.append(epoch)

    async def deposed() -> None:
        epochs.append(None)

    async with Bus(broker.url, connection_name=f"lonely leader {unique}") as lonely:
        journal = Journal(lambda _entry: None)
        await journal.start(lonely)
        leadership = Leadership(f"solo{unique}", journal, elected, deposed, retry_s=0.2)
        leadership.start(lonely)
        await wait_until(lambda: leadership.leading, what="the first term")
        first = leadership.epoch
        await asyncio.to_thread(
            rabbitmqctl, "close_all_connections", "-p", broker.vhost, "test: cut off"
        )
        await wait_until(lambda: len(epochs) >= 3, timeout_s=30, what="a second term")
        assert epochs[:2] == [first, None]
        assert epochs[2] is not None and first is not None and epochs[2] > first
        await leadership.stop()
