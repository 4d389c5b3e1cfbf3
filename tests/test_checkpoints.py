"""Checkpoints: a call saves its progress on the broker and a later run of it resumes.

The context's rules are tested without I/O; the store, the worker's three executors and
the isolation between namespaces against the real broker.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiormq
import pytest
from aio_pika import Message
from pamqp.commands import Basic

from bus import names
from bus.connection import Bus
from bus.sdk import App, CheckpointError, TaskClient, TaskContext, TaskFailed, Worker
from bus.sdk.checkpoints import (
    MAX_CHECKPOINT_BYTES,
    CheckpointStore,
    Resume,
    Saved,
    decode_state,
    encode_state,
)
from bus.sdk.protocol import Outcome
from bus.topology import checkpoint_spec, declare_app
from idlecloud.dev.services import BrokerInfo, management
from nodeagent.sim import SimNode
from schemas import JobView
from services.auth.tokens import SigningKey
from services.jobs.service import JobSettings

from .control_plane import control_plane, deploy_checkpoint_app, thesis_pcs
from .helpers import ledger_by_pc, wait_until
from .login import Login

REFUSED = (aiormq.exceptions.ChannelAccessRefused, aiormq.exceptions.ChannelClosed)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_checkpoint_is_saved_when_due_or_forced_and_holds_bytes_or_json() -> None:
    clock, sent = Clock(), []
    ctx = TaskContext(Resume("t1", 3.0), lambda task_id, saved: sent.append((task_id, saved)),
                      clock)  # fmt: skip
    assert ctx.restored is None and not ctx.due
    assert not ctx.checkpoint({"done": 1})  # not due yet
    clock.now += 3.0
    assert ctx.due and ctx.checkpoint({"done": 2}) and not ctx.due
    assert ctx.checkpoint(b"\x00raw", force=True) and ctx.saves == 2
    assert [decode_state(saved) for _id, saved in sent] == [{"done": 2}, b"\x00raw"]
    resumed = TaskContext(Resume("t1", 3.0, sent[0][1]), lambda *_: None, clock)
    assert resumed.restored == {"done": 2}


def test_a_bad_checkpoint_is_a_clear_error_never_a_crash() -> None:
    with pytest.raises(CheckpointError, match="over the 8,388,608 allowed; keep big state"):
        encode_state(b"x" * (MAX_CHECKPOINT_BYTES + 1))
    with pytest.raises(CheckpointError, match="must be bytes or JSON"):
        encode_state(object())
    corrupt = TaskContext(Resume("t1", 1.0, Saved(b'{"done": ', "application/json")),
                          lambda *_: None)  # fmt: skip
    with pytest.raises(CheckpointError, match="the checkpoint is corrupt"):
        _ = corrupt.restored
    with pytest.raises(CheckpointError, match="unknown kind 'text/plain'"):
        decode_state(Saved(b"hi", "text/plain"))
    with pytest.raises(ValueError, match="must take the TaskContext as its first argument"):
        App("alice", "bad").task(checkpoint_s=1)(lambda: None)
    with pytest.raises(ValueError, match="checkpoint_s must be > 0"):
        App("alice", "bad").task(checkpoint_s=0)(lambda ctx: None)


@pytest.fixture
def space(scratch: tuple[BrokerInfo, Bus], unique: str) -> tuple[Bus, str]:
    return scratch[1], f"ck{unique}"


async def test_the_store_keeps_the_newest_state_until_it_is_dropped(
    space: tuple[Bus, str],
) -> None:
    """Saves are stored in order, the newest replaces the older in the call's one queue, a
    load leaves it there, and a drop deletes the queue."""
    bus, namespace = space
    channel = await bus.channel()
    await declare_app(channel, namespace, "work")
    store = CheckpointStore(bus, namespace)
    await store.start()
    try:
        assert await store.load("call-1") is None
        for done in range(50):
            store.save_soon("call-1", encode_state({"done": done}))
        loaded = await store.load("call-1")  # waits for the saves under way
        assert loaded is not None and decode_state(loaded) == {"done": 49}
        assert decode_state(await store.load("call-1") or Saved(b"", "")) == {"done": 49}
        for _ in range(100):  # the newest alone, once the loads' requeues are in
            fresh = await bus.channel()  # a robust channel's passive declare can be stale
            queue = await fresh.declare_queue(names.checkpoint_queue(namespace, "call-1"),
                                              passive=True)  # fmt: skip
            await fresh.close()
            if queue.declaration_result.message_count == 1:
                break
            await asyncio.sleep(0.02)
        assert queue.declaration_result.message_count == 1
        assert 1 <= store.stored < 50  # states overtaken before they were sent were not
        await store.drop("call-1")
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await (await bus.channel()).declare_queue(
                names.checkpoint_queue(namespace, "call-1"), passive=True
            )
    finally:
        await store.stop()
        await channel.close()


@pytest.fixture
def checkpoint_app(monkeypatch: pytest.MonkeyPatch, space: tuple[Bus, str]) -> Iterator[Any]:
    """tests.programs.checkpoint_app for this test's namespace (its pool children, spawned,
    import it with the same variables)."""
    monkeypatch.setenv("IDLECLOUD_NAMESPACE", space[1])
    monkeypatch.setenv("IDLECLOUD_APP", "count")
    sys.modules.pop("tests.programs.checkpoint_app", None)
    from tests.programs import checkpoint_app

    yield checkpoint_app.app
    sys.modules.pop("tests.programs.checkpoint_app", None)


def ledger_units(ledger: Path) -> list[int]:
    return [int(line.split()[1]) for line in ledger.read_text().splitlines()] if (
        ledger.exists()) else []  # fmt: skip


async def get_from(channel: Any, queue_name: str) -> Any:
    """basic.get from a queue by name, without declaring it."""
    return await (await channel.get_queue(queue_name, ensure=False)).get(fail=False)


async def publish_to(channel: Any, exchange: str, key: str) -> None:
    """Publish to an exchange by name, without declaring it."""
    await (await channel.get_exchange(exchange, ensure=False)).publish(Message(b"{}"), key)


def checkpoint_queues(info: BrokerInfo, namespace: str) -> list[str]:
    """The checkpoint queues of a namespace, as the broker lists them."""
    listed = management("GET", f"queues/{quote(info.vhost, safe='')}")
    assert isinstance(listed, list)
    prefix = f"{names.ns_checkpoints_exchange(namespace)}."
    return [queue["name"] for queue in listed if queue["name"].startswith(prefix)]


async def test_a_call_whose_process_is_killed_resumes_from_its_checkpoint(
    scratch: tuple[BrokerInfo, Bus], space: tuple[Bus, str], checkpoint_app: App, tmp_path: Path
) -> None:
    """A call of 14 units of 0.5 s saves every 3 s in a pool process; that process is
    killed after 8 units, and the call runs again from its last checkpoint, not from 0:
    at most 3 s + 1 unit of work is done twice, and its checkpoint is gone once answered."""
    info, (bus, namespace) = scratch[0], space
    ledger = tmp_path / "ledger"
    worker = Worker(checkpoint_app, target="tests.programs.checkpoint_app:app")
    await worker.start(bus)
    try:
        async with TaskClient(bus, checkpoint_app) as client:
            count = checkpoint_app.tasks["count"]
            answer = asyncio.create_task(client.call(count, 14, 0.5, str(ledger)))
            await wait_until(lambda: len(ledger_units(ledger)) >= 8, 60, "8 units")
            assert worker._pool is not None
            for pid in worker._pool.pids:
                os.kill(pid, signal.SIGKILL)
            result = await asyncio.wait_for(answer, 60)
    finally:
        await worker.stop(1.0)
    units = ledger_units(ledger)
    assert sorted(set(units)) == list(range(14))
    redone = len(units) - 14
    assert result["resumed_at"] > 0 and redone <= 3 / 0.5 + 1, units
    assert checkpoint_queues(info, namespace) == []  # deleted once answered


async def test_a_corrupt_checkpoint_fails_its_call_clearly_or_starts_afresh(
    space: tuple[Bus, str],
) -> None:
    """A checkpoint that is not what it claims: the task that reads it plainly fails with
    the reason (the worker serves on); the task that catches CheckpointError starts
    afresh. A call retried after an error resumes from what its failed try saved. All run
    as threads, whose saves reach the store from their thread."""
    bus, namespace = space
    app = App(namespace, "fragile")

    @app.task(checkpoint_s=0.01, executor="thread")
    def strict(ctx: TaskContext, n: int) -> int:
        start = ctx.restored or 0
        ctx.checkpoint(start + n)
        return int(start + n)

    @app.task(checkpoint_s=0.01, executor="thread")
    def forgiving(ctx: TaskContext, n: int) -> int:
        try:
            start = ctx.restored or 0
        except CheckpointError:
            start = 0
        return int(start + n)

    @app.task(checkpoint_s=0.01, executor="thread", retries=1)
    def flaky(ctx: TaskContext, n: int) -> int:
        if ctx.restored is None:
            ctx.checkpoint({"half": n}, force=True)
            raise RuntimeError("the first try fails after saving")
        return int(ctx.restored["half"]) * 2

    channel = await bus.channel()
    await declare_app(channel, namespace, "fragile")
    worker = Worker(app)
    await worker.start(bus)
    try:
        async with TaskClient(bus, app) as client:
            for task_id in (f"{client.client_id}.0", f"{client.client_id}.1"):  # its next two
                await checkpoint_spec(namespace, task_id).declare(channel)
                await bus.publish_raw(
                    names.Route(names.ns_checkpoints_exchange(namespace),
                                names.checkpoint_key(task_id)),
                    b'{"half": ', Basic.Properties(content_type="application/json"),
                )  # fmt: skip
            with pytest.raises(TaskFailed, match="CheckpointError: the checkpoint is corrupt"):
                await client.call(strict, 5)
            assert await client.call(forgiving, 5) == 5
            assert await client.call(strict, 7) == 7  # a fresh call: nothing restored
            assert await client.call(flaky, 21) == 42  # its retry resumed from the save
    finally:
        await worker.stop(1.0)
        await channel.close()


async def test_a_replica_keeps_its_namespaces_checkpoints_and_cannot_touch_anothers(
    scratch: tuple[BrokerInfo, Bus], signing_key: SigningKey, unique: str
) -> None:
    """With real replica tokens: Alice's replica saves, reads and deletes her calls'
    checkpoints but cannot delete her checkpoints exchange; Bob's replica is refused every
    way at hers (declare, get, publish, bind, delete), and her checkpoint is unchanged
    after each try. (A passive declare by whoever knows a call's id tells only whether it
    has a checkpoint, as for any queue: calls' ids carry 48 or 80 random bits.)"""
    info, bus = scratch
    login = Login(info, signing_key)
    alice, bob = f"alice{unique}", f"bob{unique}"
    channel = await bus.channel()
    for namespace in (alice, bob):
        await declare_app(channel, namespace, "work")
    platform = CheckpointStore(bus, alice)
    await platform.start()

    async def hers() -> Any:
        saved = await platform.load("call-1")
        return None if saved is None else decode_state(saved)

    async with (
        await login.connect("replica", alice, "work") as alice_replica,
        await login.connect("replica", bob, "work") as bob_replica,
    ):
        own = CheckpointStore(alice_replica, alice)
        await own.start()
        own.save_soon("call-1", encode_state({"done": 7}))
        assert decode_state(await own.load("call-1") or Saved(b"", "")) == {"done": 7}
        with pytest.raises(REFUSED):
            await (await alice_replica.channel()).exchange_delete(
                names.ns_checkpoints_exchange(alice)
            )
        mine = names.checkpoint_queue(alice, "call-1")
        key = names.checkpoint_key("call-1")

        async def his_channel() -> Any:
            return await bob_replica.channel()

        attempts = {
            "declare": lambda c: checkpoint_spec(alice, "call-1").declare(c),
            "get": lambda c: get_from(c, mine),
            "delete": lambda c: c.queue_delete(mine),
            "publish": lambda c: c.default_exchange.publish(Message(b"7"), mine),
            "publish to her exchange": lambda c: publish_to(
                c, names.ns_checkpoints_exchange(alice), key),
        }  # fmt: skip
        for what, attempt in attempts.items():
            with pytest.raises(REFUSED):
                await attempt(await his_channel())
            assert await hers() == {"done": 7}, what
        theirs = CheckpointStore(bob_replica, bob)  # his own: fine
        await theirs.start()
        theirs.save_soon("call-1", encode_state({"done": 1}))
        assert decode_state(await theirs.load("call-1") or Saved(b"", "")) == {"done": 1}
        with pytest.raises(REFUSED):  # his queue bound to her exchange: read refused
            queue = await (await his_channel()).declare_queue(
                names.checkpoint_queue(bob, "call-1"), passive=True
            )
            await queue.bind(names.ns_checkpoints_exchange(alice), key)
        await own.drop("call-1")
        assert await hers() is None
        for store in (own, theirs):
            await store.stop()
    await platform.stop()
    await channel.close()


async def evict_three_times(
    work: Path, pcs: tuple[SimNode, ...], ledger: Path
) -> tuple[list[str], JobView, list[Outcome]]:
    """Run the 30-unit call as a job on one replica and log a person in three times at the
    PC running it; the PCs evicted, the job's end, and its results."""
    async with control_plane(work, pcs, jobs=JobSettings()) as plane:
        await plane.quota("alice", 4000)
        app = await deploy_checkpoint_app(plane, 1)
        async with TaskClient(plane.bus, app) as client:
            job = await client.submit_job(app.tasks["count"], [(30, 1.0, str(ledger))], name="long")
            evicted: list[str] = []
            for _ in range(3):
                await wait_until(
                    lambda: sum(pc not in evicted for pc, _u in ledger_by_pc(ledger)) >= 5,
                    120, "5 units on a PC no person has sat at",
                )  # fmt: skip
                running = ledger_by_pc(ledger)[-1][0]
                plane.simulation.login(running)
                evicted.append(running)
            view = await asyncio.wait_for(job.wait(poll_s=0.5), 180)
            return evicted, view, [outcome async for _index, outcome in job.results()]


@pytest.mark.timeout(400)
async def test_a_30_cpu_second_task_evicted_three_times_redoes_at_most_a_checkpoint_each(
    unique: str, tmp_path: Path, ledger: Path
) -> None:
    """One call of 30 units of 1 CPU-second, saving every 3 s, on one replica. Three times
    a person logs in (a real utmp record) at the PC running it: its agent freezes it,
    placement starts a replacement on an idle PC and stops the frozen one, and the call is
    delivered again and resumes from its last checkpoint. Each time at most the checkpoint
    interval plus one unit is computed again (counted from the units' ledger), and the
    job gets one result, from the fourth PC."""
    evicted, view, results = await evict_three_times(tmp_path, thesis_pcs(unique), ledger)
    computed = ledger_by_pc(ledger)
    assert [pc for pc, _unit in computed if pc not in evicted] and len(set(evicted)) == 3
    assert sorted({unit for _pc, unit in computed}) == list(range(30))
    redone = []
    for before, after in itertools.pairwise([*evicted, computed[-1][0]]):
        last_before = max(unit for pc, unit in computed if pc == before)
        first_after = min(unit for pc, unit in computed if pc == after)
        redone.append(last_before + 1 - first_after)  # units computed on both PCs
    assert all(0 <= units <= 3 + 1 for units in redone), (redone, computed)
    assert (view.state, view.done, view.duplicates) == ("done", 1, 0)
    (result,) = results
    assert result.ok and result.value["units"] == 30 and result.value["resumed_at"] > 0
    print(
        f"30 units, evicted at {evicted}: {len(computed)} computed, redone per eviction "
        f"{redone} (at most 3 s of work + 1 unit each); {view.redelivered} redelivered"
    )
