"""The journal and leadership on the real broker: replay, catch-up, reconnects, takeover."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bus import names
from bus.connection import Bus
from bus.journal import Journal
from bus.leader import Leadership
from bus.topology import QueueSpec, declare_platform
from idlecloud.dev.services import BrokerInfo, create_vhost, delete_vhost, free_port, rabbitmqctl
from schemas import Amount, DeployRequest, QuotaSet, TokenRevoke
from schemas.journal import Entry
from services.auth.service import AuthService, AuthSettings
from services.auth.tokens import SigningKey
from services.placement.service import Placement
from services.quota.service import QuotaManager

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


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_small_journal_drops_old_entries_and_every_restarted_service_keeps_them(
    unique: str, tmp_path: Path
) -> None:
    """The journal capped at 1 MB in 64 kB segments (the platform's is 1 GiB in 500 MB
    ones), the quota manager leading with a snapshot every 64 entries. The first quota and
    the first revocation, then 3,000 more entries: the stream has dropped its first
    entries, and the quota manager, placement and the auth service, each started afresh,
    still hold both."""
    broker = create_vhost(f"journal-{unique}")
    try:
        await small_journal_scenario(broker, unique, tmp_path)
    finally:
        await asyncio.to_thread(delete_vhost, broker.vhost)


async def small_journal_scenario(broker: BrokerInfo, unique: str, tmp_path: Path) -> None:
    small = QueueSpec(names.JOURNAL_STREAM, arguments={
        "x-queue-type": "stream", "x-max-length-bytes": 1_000_000,
        "x-stream-max-segment-size-bytes": 64_000,
    })  # fmt: skip
    async with Bus(broker.url, connection_name="small journal") as bus:
        await declare_platform(bus, journal=small)
        await declare_platform(bus)  # as every service does: the journal keeps its limits
        leader = QuotaManager(retry_s=0.2, snapshot_every=64)
        await leader.start(bus)
        await wait_until(lambda: leader.leadership.leading, 10, "the quota manager to lead")
        first_quota = QuotaSet(request_id=f"first-quota-{unique}", namespace="first",
                               cpu_millicores=4000, memory_mib=8192)  # fmt: skip
        first_revoke = TokenRevoke(request_id=f"first-revoke-{unique}", key_id="k" * 16)
        first = await leader.journal.append_and_read(first_quota)
        await leader.journal.append(first_revoke)
        for batch in range(30):  # 3,000 entries, 100 in flight at a time
            await asyncio.gather(*(
                leader.journal.append(QuotaSet(
                    request_id=f"q-{unique}-{batch}-{index}", namespace=f"n{index % 50}",
                    cpu_millicores=1000 + batch, memory_mib=1024,
                ))
                for index in range(100)
            ))  # fmt: skip
        await leader.journal.catch_up()
        await wait_until(lambda: not leader._snapshotting, 30, "the last snapshot")
        await leader.stop(1.0)
        seen: list[Entry] = []
        from_first = Journal(seen.append)
        await from_first.start(bus)
        await from_first.catch_up()
        assert seen[0].offset > first.offset + 1  # the first entries are gone from the stream
        print(f"the stream now starts at offset {seen[0].offset} of {seen[-1].offset}")
        key = SigningKey.generate()
        private, _public = key.save(tmp_path / "keys")
        auth = AuthSettings(private, vhost=broker.vhost, http_port=free_port())
        for service in (QuotaManager(retry_s=0.2), Placement(retry_s=0.2),
                        AuthService(auth, retry_s=0.2)):  # fmt: skip
            await service.start(bus)
            try:
                assert service.state.quotas["first"] == Amount(4000, 8192), service.name
                assert "k" * 16 in service.state.revoked, service.name
                assert service.state.quotas["n7"].cpu_millicores == 1029  # the last batch
            finally:
                await service.stop(1.0)
