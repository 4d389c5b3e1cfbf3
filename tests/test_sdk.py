"""The worker SDK against a real broker and real worker processes."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator

import pytest
from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

from bus import names
from bus.connection import Bus
from bus.sdk import App, TaskClient, TaskFailed
from bus.sdk.protocol import JSON, TASK_HEADER, Outcome, decode_outcomes
from idlecloud.dev.services import BrokerInfo
from tests.programs.sdk_tasks import make_app

from .helpers import wait_until
from .workers import WorkerProcess


@pytest.fixture
def app(unique: str) -> App:
    return make_app(f"t{unique}", "sdk")


@pytest.fixture
async def client(bus: Bus, app: App) -> AsyncIterator[TaskClient]:
    async with TaskClient(bus, app) as started:
        yield started


@pytest.fixture
async def worker(broker: BrokerInfo, app: App, client: TaskClient) -> AsyncIterator[WorkerProcess]:
    started = await WorkerProcess(broker, app).start()
    yield started
    await started.stop(signal.SIGKILL)


async def test_calls_maps_and_batches_return_the_right_values(
    client: TaskClient, app: App, worker: WorkerProcess
) -> None:
    assert await client.call(app.tasks["square"], 7) == 49
    assert await client.call(app.tasks["add"], 1, 2, scale=10) == 30
    assert await client.call(app.tasks["reverse"], b"\x00\x01tile") == b"elit\x01\x00"
    mapped = dict([item async for item in client.map(app.tasks["square"], range(300))])
    assert mapped == {i: i * i for i in range(300)}
    batched = dict(
        [
            item
            async for item in client.map(
                app.tasks["add"], [(i, i) for i in range(1000)], batch_size=100
            )
        ]
    )
    assert batched == {i: 2 * i for i in range(1000)}
    assert client.duplicates == 0


async def test_a_default_map_packs_small_calls_and_sends_bytes_alone(
    client: TaskClient, app: App, worker: WorkerProcess
) -> None:
    """Without a batch size, a map of tiny calls packs many per message (by the run times
    results report); bytes, in or out, still travel in messages of their own."""
    sent = client.messages_sent
    mapped = dict(
        [item async for item in client.map(app.tasks["add"], [(i, i) for i in range(3000)])]
    )
    assert mapped == {i: 2 * i for i in range(3000)}
    assert client.messages_sent - sent < 3000 / 5
    tiles = dict([item async for item in client.map(app.tasks["tile"], range(500))])
    assert tiles == {i: bytes([i % 256]) * 3 for i in range(500)}
    data = [bytes([i % 256, 7]) for i in range(300)]
    reversed_ = dict([item async for item in client.map(app.tasks["reverse"], data)])
    assert reversed_ == {i: data[i][::-1] for i in range(300)}
    assert client.duplicates == 0


async def test_a_poison_task_fails_with_its_traceback_and_is_dead_lettered(
    bus: Bus, client: TaskClient, app: App, worker: WorkerProcess
) -> None:
    channel = await bus.channel()
    queue = await channel.declare_queue(names.task_dead_queue(app.namespace, app.app), passive=True)
    with pytest.raises(TaskFailed) as failed:
        await client.call(app.tasks["poison"], 13)
    assert failed.value.error == "ValueError: poisoned input 13"
    assert "Traceback" in failed.value.traceback
    assert "raise ValueError" in failed.value.traceback
    dead = await queue.get(timeout=5)  # the worker dead-letters before it answers
    headers = dead.headers or {}
    assert headers[TASK_HEADER] == "poison"
    assert headers["idlecloud-dead-reason"] == "ValueError: poisoned input 13"
    assert "poisoned input 13" in str(headers["idlecloud-traceback"])
    assert b"[13]" in dead.body
    assert await client.call(app.tasks["square"], 3) == 9  # the worker goes on


async def test_timeouts_unknown_tasks_and_bad_results_are_errors_not_crashes(
    client: TaskClient, app: App, worker: WorkerProcess
) -> None:
    with pytest.raises(TaskFailed, match=r"timed out after 0\.5 s"):
        await client.call(app.tasks["slow"], 5)
    with pytest.raises(TaskFailed, match="not JSON"):
        await client.call(app.tasks["not_json"])
    stranger = make_app(app.namespace, app.app)

    @stranger.task
    def missing() -> None: ...

    with pytest.raises(TaskFailed, match="unknown task 'missing'"):
        await client.call(stranger.tasks["missing"])
    assert await client.call(app.tasks["square"], 4) == 16


async def test_a_malformed_task_body_is_answered_with_an_error(
    bus: Bus, client: TaskClient, app: App, worker: WorkerProcess
) -> None:
    answers: list[AbstractIncomingMessage] = []
    channel = await bus.channel()
    mine = await channel.declare_queue(exclusive=True)
    await mine.bind(names.ns_results_exchange(app.namespace), "prober")

    async def collect(message: AbstractIncomingMessage) -> None:
        answers.append(message)

    await mine.consume(collect, no_ack=True)
    for body in (b"{not json", b'{"args": 5}', b'{"args": [], "extra": 1}'):
        properties = Basic.Properties(
            content_type=JSON,
            message_id="probe-1",
            reply_to="prober",
            headers={TASK_HEADER: "square"},
        )
        route = names.Route(names.ns_tasks_exchange(app.namespace), app.app)
        await bus.publish_raw(route, body, properties)

    def refusals() -> list[Outcome]:
        return [
            outcome
            for answer in answers
            for outcome in decode_outcomes(answer.body, answer.content_type, answer.correlation_id)
        ]

    await wait_until(lambda: len(refusals()) == 3, what="three error answers")
    assert all(not o.ok and o.error.startswith("refused: invalid task call") for o in refusals())
    assert await client.call(app.tasks["square"], 5) == 25


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["main process", "pool child", "sigterm"])
async def test_killing_a_worker_mid_map_loses_and_duplicates_nothing(
    broker: BrokerInfo, client: TaskClient, app: App, victim: str
) -> None:
    """Kill -9 the worker (or one of its pool processes, or SIGTERM it) during a 10,000-task map.

    Every task's result comes back exactly once, with the right value; a second worker
    finishes what the first one held. A worker stopped by SIGTERM first sends the acks it
    held back (AckBatcher's linger), so no task it answered runs again.
    """
    first = await WorkerProcess(broker, app).start()
    replacement: WorkerProcess | None = None
    results: dict[int, int] = {}
    count = 0
    try:
        async for index, value in client.map(app.tasks["square"], range(10_000), progress=False):
            assert index not in results
            results[index] = value
            count += 1
            if count == 2_000:
                if victim == "pool child":
                    os.kill(first.children()[0].pid, signal.SIGKILL)
                else:
                    await first.stop(signal.SIGKILL if victim == "main process" else signal.SIGTERM)
                    replacement = await WorkerProcess(broker, app).start()
    finally:
        await first.stop(signal.SIGKILL)
        if replacement is not None:
            await replacement.stop(signal.SIGKILL)
    assert count == 10_000
    assert results == {i: i * i for i in range(10_000)}
    if victim == "sigterm":
        assert client.duplicates == 0, f"{client.duplicates} results came twice"
