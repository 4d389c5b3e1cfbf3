"""The bus library against a real RabbitMQ: typed publish/consume, RPC, dead-lettering."""

from __future__ import annotations

import asyncio

import pytest

from bus import names
from bus.codec import Delivery, encode
from bus.connection import Bus
from bus.consumer import Consumer
from bus.errors import BrokerUnavailable, RpcTimeout, Unroutable
from bus.rpc import RpcClient, RpcServer
from bus.service import supervised
from bus.topology import QueueSpec
from schemas import DeleteRequest, DeployRequest, Owner, RequestResult, ScaleRequest

from .examples import deploy
from .helpers import DeadLetterTap, open_namespace, wait_until


@pytest.fixture(autouse=True)
async def _namespace(bus: Bus, unique: str) -> None:
    """Each test's namespace ``t<unique>`` has its door."""
    await open_namespace(bus, f"t{unique}")


def _requests_queue(unique: str) -> QueueSpec:
    """A platform-style queue for deploy requests of one test namespace."""
    return QueueSpec.quorum(
        names.service_queue(f"test-{unique}", "requests"),
        (names.REQUESTS_EXCHANGE, f"ns.t{unique}.#"),
    )


async def test_typed_messages_are_published_and_consumed(bus: Bus, unique: str) -> None:
    received: list[DeployRequest] = []

    async def handle(message: DeployRequest, delivery: Delivery) -> None:
        assert delivery.routing_key == f"ns.t{unique}.deploy.{message.app}"
        received.append(message)

    consumer = Consumer(_requests_queue(unique), [DeployRequest], handle)
    await consumer.start(bus)
    sent = [deploy(f"t{unique}", f"app-{i}", f"req-{i:06d}") for i in range(50)]
    for message in sent:
        await bus.publish(message)
    await wait_until(lambda: len(received) == len(sent), what="all 50 messages")
    await consumer.stop()
    assert sorted(received, key=lambda m: m.request_id) == sent
    assert consumer.handled == 50
    assert consumer.dead_lettered == 0


async def _rpc_server(bus: Bus, unique: str) -> RpcServer[ScaleRequest]:
    async def answer(request: ScaleRequest, _delivery: Delivery) -> RequestResult:
        return RequestResult(
            request_id=request.request_id,
            namespace=request.namespace,
            accepted=request.replicas <= 10,
            reason="" if request.replicas <= 10 else f"{request.replicas} replicas > 10",
        )

    server = RpcServer(
        QueueSpec.quorum(
            names.service_queue(f"test-{unique}", "scale"),
            (names.REQUESTS_EXCHANGE, f"ns.t{unique}.scale.*"),
        ),
        [ScaleRequest],
        answer,
    )
    await server.start(bus)
    return server


async def test_rpc_answers_each_caller(bus: Bus, unique: str) -> None:
    server = await _rpc_server(bus, unique)
    client = await RpcClient(bus, Owner.namespace(f"t{unique}")).start()
    requests = [
        ScaleRequest(request_id=f"scale-{i:04d}", namespace=f"t{unique}", app="a", replicas=i)
        for i in (3, 30)
    ]
    ok, refused = await asyncio.gather(*(client.call(r, RequestResult) for r in requests))
    assert (ok.request_id, ok.accepted) == ("scale-0003", True)
    assert (refused.accepted, refused.reason) == (False, "30 replicas > 10")
    await client.stop()
    await server.stop()


async def test_rpc_times_out_when_nobody_answers(bus: Bus, unique: str) -> None:
    async def silent(_message: DeleteRequest, _delivery: Delivery) -> None:
        await asyncio.sleep(0)

    consumer = Consumer(_requests_queue(unique), [DeleteRequest], silent)
    await consumer.start(bus)
    client = await RpcClient(bus, Owner.namespace(f"t{unique}")).start()
    request = DeleteRequest(request_id="delete-0001", namespace=f"t{unique}", app="a")
    with pytest.raises(RpcTimeout, match=r"no answer to DeleteRequest .* within 0.3 s"):
        await client.call(request, RequestResult, timeout_s=0.3)
    await client.stop()
    await consumer.stop()


async def test_rpc_to_a_route_nobody_consumes_is_unroutable(bus: Bus, unique: str) -> None:
    client = await RpcClient(bus, Owner.namespace(f"t{unique}")).start()
    request = ScaleRequest(request_id="scale-nobody", namespace=f"t{unique}", app="a", replicas=1)
    with pytest.raises(Unroutable, match=f"ns.t{unique}.scale.a"):
        await client.call(request, RequestResult, timeout_s=5)
    await client.stop()


async def test_rpc_refuses_to_answer_into_someone_elses_queue(bus: Bus, unique: str) -> None:
    server = await _rpc_server(bus, unique)
    tap = await DeadLetterTap(server.name).start(bus)
    victim = names.reply_queue(Owner.namespace("victim"), "abc")
    body, properties = encode(
        ScaleRequest(request_id="scale-evil", namespace=f"t{unique}", app="a", replicas=1),
        reply_to=victim,
    )
    route = names.Route(names.door(Owner.namespace(f"t{unique}")), f"ns.t{unique}.scale.a")
    await bus.publish_raw(route, body, properties)
    await wait_until(lambda: len(tap.messages) == 1, what="the dead letter")
    assert "is not a reply queue of ns.t" in tap.reasons()[0]
    assert server.handled == 0
    await server.stop()


async def test_a_failing_handler_dead_letters_with_traceback_and_goes_on(
    bus: Bus, unique: str
) -> None:
    handled: list[str] = []

    async def handle(message: DeployRequest, _delivery: Delivery) -> None:
        if message.app == "poison":
            raise ValueError("cannot place a poison app")
        handled.append(message.app)

    consumer = Consumer(_requests_queue(unique), [DeployRequest], handle)
    tap = await DeadLetterTap(consumer.name).start(bus)
    await consumer.start(bus)
    for app in ("good-1", "poison", "good-2"):
        await bus.publish(deploy(f"t{unique}", app, f"req-{app}"))
    await wait_until(lambda: len(handled) == 2 and len(tap.messages) == 1, what="3 outcomes")
    await consumer.stop()
    assert tap.reasons() == ["handler failed: ValueError: cannot place a poison app"]
    assert "Traceback" in str(tap.header(0, "idlecloud-traceback"))
    assert tap.header(0, "idlecloud-schema") == "DeployRequest"
    assert tap.header(0, "idlecloud-original-routing-key") == f"ns.t{unique}.deploy.poison"


async def test_a_supervised_duty_that_fails_is_logged_and_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    forever = asyncio.Event()

    async def duty() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise BrokerUnavailable("the broker went away")
        await forever.wait()

    task = asyncio.create_task(supervised("heartbeats", duty, first_backoff_s=0.01))
    await wait_until(lambda: len(runs) == 3, 5, "the third start")
    assert [r.getMessage() for r in caplog.records if r.name == "bus.service"] == [
        "heartbeats failed; restarting in 0.01 s",
        "heartbeats failed; restarting in 0.02 s",
    ]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_supervised_duty_cancelled_from_below_is_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ``CancelledError`` that is not the supervisor's own cancellation (aiormq fails what
    awaited a connection it dropped as stuck with one) restarts the duty: it had ended an
    agent's heartbeats for good, and placement's reconciler. Cancelling the supervisor
    still ends it."""
    runs: list[int] = []
    forever = asyncio.Event()

    async def duty() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            dropped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            dropped.cancel()  # as aiormq cancels a confirm's future, not the awaiting task
            await dropped
        await forever.wait()

    task = asyncio.create_task(supervised("heartbeats", duty, first_backoff_s=0.01))
    await wait_until(lambda: len(runs) == 2, 5, "the second start")
    assert [r.getMessage() for r in caplog.records if r.name == "bus.service"] == [
        "heartbeats was cancelled from below; restarting in 0.01 s"
    ]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled() and len(runs) == 2
