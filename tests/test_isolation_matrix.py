"""The isolation matrix: every principal tries every route RabbitMQ offers towards every
platform effect it may not cause, with real tokens on a real broker, and the platform's
state is checked afterwards. Each route is also taken by the principal who may cause the
effect (the positive control), so a forbidden cell cannot pass because its route is
broken.

Principals: a user (alice), another user (bob), two PCs (edge, ninja), a replica of
alice's, an admin, and the platform. Effects: alice's quota raised, an app deployed in
bob's namespace, ninja cordoned (the quota manager's state), ninja's presence reported,
a key revoked and a replica started on edge (what a platform consumer accepts, through
the same decoding every consumer uses, the auth service's included). Routes: the
message's own route, the platform's user id claimed, the sender's door with the effect's
key, carbon copies (CC, BCC), dead-lettering into the target or through the sender's own
door, alternate exchanges and exchange-to-exchange bindings (into the target, or through
the sender's door), the default exchange, and ``update-secret`` with the rightful
principal's token. Reading another owner's traffic by binding to it with ``#`` is tried
separately.

A message sent by an alternate exchange or an exchange-to-exchange binding keeps the
exchange it was published to, so no consumer takes it as on its route (nobody, however
rightful, acts through those routes): their positive control is that the route carried
the rightful principal's message into the platform's exchange.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel

from bus import names
from bus.codec import Delivery, encode
from bus.connection import Bus
from bus.consumer import Consumer
from bus.rpc import RpcClient
from bus.topology import QueueSpec, declare_app
from idlecloud.dev.services import BrokerInfo
from schemas import (
    CordonRequest,
    DeployRequest,
    Message,
    NodePresence,
    Owner,
    QuotaSet,
    RequestResult,
    StartReplica,
    TokenRevoke,
)
from services.auth.tokens import SigningKey
from services.quota.service import QuotaManager

from .examples import BUSY, EXAMPLES, deploy
from .helpers import wait_until
from .login import Login

#: The broker's refusals: no permission, or a ``user_id`` that is not the connection's.
REFUSED = (aiormq.exceptions.ChannelAccessRefused, aiormq.exceptions.ChannelPreconditionFailed)
#: How long a forbidden attempt has to show an effect (a control shows it well within).
SETTLE_S = 3.0


@dataclass(frozen=True)
class Who:
    """A principal of the matrix: how it logs in, and its door (None: it has none)."""

    name: str
    role: str
    subject: str
    app: str = ""

    @property
    def door(self) -> str | None:
        owner = {"user": Owner.namespace, "node": Owner.node}.get(self.role)
        if owner is not None:
            return names.door(owner(self.subject))
        return names.ADMIN_DOOR if self.role == "admin" else None


ALICE = Who("alice", "user", "alice")
BOB = Who("bob", "user", "bob")
EDGE = Who("edge", "node", "edge")
NINJA = Who("ninja", "node", "ninja")
REPLICA = Who("replica", "replica", "alice", "stereo")
ADMIN = Who("admin", "admin", "ops")
PLATFORM = Who("platform", "platform", "")
PRINCIPALS = (ALICE, BOB, EDGE, NINJA, REPLICA, ADMIN)


@dataclass
class World:
    """The platform under attack, and everyone's connections."""

    quota: QuotaManager
    accepted: list[Message] = field(default_factory=list)  # by the platform's witness
    arrived: set[str] = field(default_factory=set)  # message ids seen on platform exchanges
    buses: dict[str, Bus] = field(default_factory=dict)
    login: Login | None = None


@dataclass(frozen=True)
class Effect:
    """Something only ``rightful`` may cause: the message that causes it (the ``n``-th
    variant, so each control must cause it anew), and whether that message took effect."""

    name: str
    make: Callable[[int], Message]
    rightful: Who
    happened: Callable[[World, Message], bool]
    #: Others who may cause it too (an admin acts in every namespace).
    also_allowed: tuple[Who, ...] = ()


def _quota_raised(world: World, message: Message) -> bool:
    quota = world.quota.state.quotas.get("alice")
    return quota is not None and isinstance(message, QuotaSet) and (
        quota.cpu_millicores == message.cpu_millicores)  # fmt: skip


def _accepted(world: World, message: Message) -> bool:
    return message in world.accepted


EFFECTS = (
    Effect("alice's quota raised",
           lambda n: QuotaSet(request_id=f"req-quota-{n}", namespace="alice",
                              cpu_millicores=900_000 + n, memory_mib=900_000), ADMIN,
           _quota_raised),
    Effect("an app deployed in bob's namespace",
           lambda n: deploy("bob", f"evil{n}", f"req-deploy-{n}"), BOB,
           lambda w, m: ("bob", getattr(m, "app", "")) in w.quota.state.deployments,
           also_allowed=(ADMIN,)),
    Effect("ninja cordoned",
           lambda n: CordonRequest(request_id=f"req-cordon-{n}", node=f"ninja{n or ''}",
                                   action="cordon"), ADMIN,
           lambda w, m: getattr(m, "node", "") in w.quota.state.cordons),
    Effect("ninja's presence reported",
           lambda n: NodePresence(node="ninja", presence=BUSY.model_copy(update={
               "detail": f"tty{n}"})), NINJA, _accepted),
    Effect("bob's key revoked",
           lambda n: TokenRevoke(request_id=f"req-revoke-{n}", key_id="b0b" * 5 + str(n % 10),
                                 reason="matrix"), ADMIN, _accepted),
    Effect("a replica started on edge",
           lambda n: EXAMPLES[StartReplica].model_copy(update={"epoch": 7 + n}), PLATFORM,
           _accepted),
)  # fmt: skip


def _amqp_message(
    bus: Bus, message: Message, message_id: str, **headers: object
) -> aio_pika.Message:
    body, properties = encode(message)
    return aio_pika.Message(  # RPC servers answer only a reply queue of the message's owner
        body, content_type="application/json", message_id=message_id, user_id=bus.user_name,
        reply_to=names.reply_queue(message.owner(), "matrix"),
        headers={**(properties.headers or {}), **headers},
    )  # fmt: skip


async def _exchange(channel: AbstractRobustChannel, name: str) -> aio_pika.abc.AbstractExchange:
    if name == names.DEFAULT_EXCHANGE:
        return channel.default_exchange
    return await channel.get_exchange(name, ensure=False)


Route = Callable[[World, Who, Message, str], Awaitable[None]]


def _own(who: Who, what: str) -> str:
    """A name of ``who``'s own (a replica has none: it gets one of its namespace's)."""
    prefix = (
        Owner.node(who.subject).prefix
        if who.role == "node"
        else (
            names.ADMIN_PREFIX
            if who.role in ("admin", "platform")
            else Owner.namespace(who.subject).prefix
        )
    )
    return f"{prefix}.{what}-{uuid.uuid4().hex[:6]}"  # fmt: skip


@asynccontextmanager
async def _channel(world: World, who: Who) -> AsyncIterator[tuple[Bus, AbstractRobustChannel]]:
    """A fresh channel of ``who``'s, closed afterwards unless the broker closed it."""
    bus = world.buses[who.name]
    channel = await bus.channel()
    try:
        yield bus, channel
    finally:
        if not channel.is_closed:
            await channel.close()


def _target(who: Who, message: Message, through_own_door: bool) -> str:
    """Where a route leads: the message's own exchange, or the sender's door."""
    return who.door if through_own_door and who.door else names.route(message).exchange


async def _publish(world: World, who: Who, exchange: str, key: str, message: Message,
                   message_id: str, **headers: object) -> None:  # fmt: skip
    async with _channel(world, who) as (bus, channel):
        target = await _exchange(channel, exchange)
        await target.publish(_amqp_message(bus, message, message_id, **headers), key)


async def direct(world: World, who: Who, message: Message, mid: str) -> None:
    route = names.route(message)
    await _publish(world, who, route.exchange, route.routing_key, message, mid)


async def claims_platform(world: World, who: Who, message: Message, mid: str) -> None:
    route = names.route(message)
    async with _channel(world, who) as (bus, channel):
        amqp = _amqp_message(bus, message, mid)
        amqp.user_id = world.buses[PLATFORM.name].user_name
        await (await _exchange(channel, route.exchange)).publish(amqp, route.routing_key)


async def own_door(world: World, who: Who, message: Message, mid: str) -> None:
    route = names.route(message)
    await _publish(world, who, who.door or route.exchange, route.routing_key, message, mid)


def _best_key(who: Who, message: Message) -> tuple[str, str]:
    """The exchange and key a sender can best publish on: the message's own route if it
    may, else its own door with a key of its own."""
    route = names.route(message)
    if who.door in (None, route.exchange) or who is PLATFORM:
        return route.exchange, route.routing_key
    return who.door, f"{who.door}.copy"


def copied(header: str) -> Route:
    async def attempt(world: World, who: Who, message: Message, mid: str) -> None:
        exchange, key = _best_key(who, message)
        real = names.route(message).routing_key
        await _publish(world, who, exchange, key, message, mid, **{header: [real]})

    return attempt


def dead_lettered(through_own_door: bool) -> Route:
    async def attempt(world: World, who: Who, message: Message, mid: str) -> None:
        target, key = _target(who, message, through_own_door), names.route(message).routing_key
        async with _channel(world, who) as (bus, channel):
            trap = await channel.declare_exchange(_own(who, "trap"), "fanout", auto_delete=True)
            queue = await channel.declare_queue(_own(who, "expiring"), auto_delete=True, arguments={
                "x-message-ttl": 0, "x-dead-letter-exchange": target,
                "x-dead-letter-routing-key": key})  # fmt: skip
            await queue.bind(trap)
            await trap.publish(_amqp_message(bus, message, mid), "any")
            await asyncio.sleep(0.3)  # expired and dead-lettered before the queue goes

    return attempt


def alternate(through_own_door: bool) -> Route:
    async def attempt(world: World, who: Who, message: Message, mid: str) -> None:
        target, key = _target(who, message, through_own_door), names.route(message).routing_key
        async with _channel(world, who) as (bus, channel):
            dead_end = await channel.declare_exchange(
                _own(who, "alt"), "direct", auto_delete=True,
                arguments={"alternate-exchange": target})  # fmt: skip
            await dead_end.publish(_amqp_message(bus, message, mid), key)

    return attempt


def exchange_bound(through_own_door: bool) -> Route:
    async def attempt(world: World, who: Who, message: Message, mid: str) -> None:
        target, key = _target(who, message, through_own_door), names.route(message).routing_key
        async with _channel(world, who) as (bus, channel):
            source = await channel.declare_exchange(_own(who, "e2e"), "fanout", auto_delete=True)
            destination = await _exchange(channel, target)
            await destination.bind(source)
            await source.publish(_amqp_message(bus, message, mid), key)

    return attempt


async def default_exchange(world: World, who: Who, message: Message, mid: str) -> None:
    consumer_queue = (
        names.service_queue("quota", "requests")
        if isinstance(message, QuotaSet | DeployRequest | CordonRequest)
        else WITNESS_QUEUE
    )
    await _publish(world, who, names.DEFAULT_EXCHANGE, consumer_queue, message, mid)


def _rightful(message: Message) -> Who:
    return next(e.rightful for e in EFFECTS if type(e.make(0)) is type(message)
                and e.make(0).owner() == message.owner())  # fmt: skip


async def secret_swapped(world: World, who: Who, message: Message, mid: str) -> None:
    """Swap the rightful principal's token into this connection, send on the message's
    own route, and swap the own token back. (The rightful principal's control sends on its
    own connection; the platform has no token to steal, so its effect gets none.)"""
    rightful, login = _rightful(message), world.login
    assert login is not None
    if who is rightful or rightful is PLATFORM or who is PLATFORM:
        await direct(world, who, message, mid)
        return
    connection = world.buses[who.name].connection
    await connection.update_secret(login.token(rightful.role, rightful.subject, rightful.app),
                                   reason="a stolen token")  # fmt: skip
    try:
        await direct(world, who, message, mid)
    finally:
        await connection.update_secret(login.token(who.role, who.subject, who.app),
                                       reason="its own token again")  # fmt: skip


ROUTES: dict[str, Route] = {
    "its own route": direct,
    "the platform's user id claimed": claims_platform,
    "its own door, the effect's key": own_door,
    "a CC header": copied("CC"),
    "a BCC header": copied("BCC"),
    "dead-lettered into the target": dead_lettered(through_own_door=False),
    "dead-lettered through its own door": dead_lettered(through_own_door=True),
    "an alternate exchange into the target": alternate(through_own_door=False),
    "an alternate exchange through its own door": alternate(through_own_door=True),
    "an exchange bound to the target": exchange_bound(through_own_door=False),
    "an exchange bound to its own door": exchange_bound(through_own_door=True),
    "the default exchange": default_exchange,
    "update-secret with the rightful token": secret_swapped,
}
#: Routes by which nobody acts (the message keeps the exchange it was published to).
CARRY_ONLY = {name for name in ROUTES if "alternate" in name or "exchange bound" in name}
#: Routes only the platform may take, whoever may cause the effect otherwise.
PLATFORM_ONLY = {"the platform's user id claimed", "the default exchange"}
WITNESS_QUEUE = "idlecloud.test.witness"


@pytest.fixture
async def world(scratch: tuple[BrokerInfo, Bus], signing_key: SigningKey) -> AsyncIterator[World]:
    broker, platform = scratch
    quota = QuotaManager(retry_s=0.2)
    await quota.start(platform)
    await wait_until(lambda: quota.leadership.leading, what="the quota manager to lead")
    world = World(quota, login=Login(broker, signing_key))

    async def witness(message: Message, _delivery: Delivery) -> None:
        world.accepted.append(message)

    spec = QueueSpec(WITNESS_QUEUE, ((names.EVENTS_EXCHANGE, "node.*.presence"),
                                     (names.COMMANDS_EXCHANGE, "node.edge.#"),
                                     (names.REQUESTS_EXCHANGE, "idlecloud.admin.token.revoke")),
                     durable=False, auto_delete=True)  # fmt: skip
    consumer = Consumer(spec, [NodePresence, StartReplica, TokenRevoke], witness)
    await consumer.start(platform)

    async def arrived(incoming: AbstractIncomingMessage) -> None:
        world.arrived.add(incoming.message_id or "")

    channel = await platform.channel()
    for namespace in ("alice", "bob"):  # their apps' exchanges and queues exist
        await declare_app(channel, namespace, "stereo")
    tap = await QueueSpec.private(
        "idlecloud.test.tap", *((exchange, "#") for exchange in names.PLATFORM_EXCHANGES)
    ).declare(channel)
    await tap.consume(arrived, no_ack=True)
    admin = await RpcClient(platform, Owner.platform()).start()  # bob may deploy: a quota
    bob_quota = QuotaSet(request_id="req-bob-quota", namespace="bob", cpu_millicores=1_000_000,
                         memory_mib=1_000_000)  # fmt: skip
    reply = await admin.call(bob_quota, RequestResult, timeout_s=10)
    assert reply.accepted, reply.reason
    await admin.stop()
    world.buses[PLATFORM.name] = platform
    for who in PRINCIPALS:
        world.buses[who.name] = await world.login.connect(who.role, who.subject, who.app)  # type: ignore[arg-type]
    try:
        yield world
    finally:
        for who in PRINCIPALS:
            await world.buses[who.name].close()
        await consumer.stop(1.0)
        await channel.close()
        await quota.stop(1.0)


async def _try(route: Route, world: World, who: Who, message: Message) -> tuple[str, str]:
    """Take the route; the message id, and whether the broker refused it."""
    mid = uuid.uuid4().hex
    try:
        await route(world, who, message, mid)
    except REFUSED:
        return mid, "refused by the broker"
    except aiormq.exceptions.AMQPError as error:
        return mid, f"failed: {type(error).__name__}"
    return mid, "sent"


async def test_no_principal_causes_an_effect_it_may_not_by_any_route(world: World) -> None:
    outcomes: Counter[str] = Counter()
    attempts: list[tuple[str, str, str, str]] = []
    for effect in EFFECTS:
        for who in PRINCIPALS:
            if who is effect.rightful or who in effect.also_allowed:
                continue
            for route_name, route in ROUTES.items():
                mid, outcome = await _try(route, world, who, effect.make(0))
                attempts.append((effect.name, who.name, route_name, mid))
                outcomes[outcome] += 1
            if who.name in world.buses and world.buses[who.name].connection.is_closed:
                pytest.fail(f"{who.name}'s connection was closed by its attempts")
    await asyncio.sleep(SETTLE_S)
    caused = [effect.name for effect in EFFECTS if effect.happened(world, effect.make(0))]
    reached = sum(1 for *_, mid in attempts if mid in world.arrived)
    print(f"\nisolation matrix: {len(attempts)} forbidden attempts "
          f"({len(EFFECTS)} effects, each by every principal who may not cause it, "
          f"{len(ROUTES)} routes): {dict(outcomes)}; {reached} reached a platform exchange "
          f"and were refused by its consumers; effects caused: {caused}")  # fmt: skip
    assert caused == []
    assert outcomes["refused by the broker"] > 0 and not any(
        outcome.startswith("failed") for outcome in outcomes
    ), outcomes

    controls: Counter[str] = Counter()
    for number, (route_name, route, effect) in enumerate(
        (r, route, e) for r, route in ROUTES.items() for e in EFFECTS
    ):
        who = PLATFORM if route_name in PLATFORM_ONLY else effect.rightful
        message = effect.make(number + 1)
        mid, outcome = await _try(route, world, who, message)
        assert outcome == "sent", (route_name, effect.name, outcome)
        if route_name in CARRY_ONLY:
            await wait_until(lambda m=mid: m in world.arrived, SETTLE_S,
                             what=f"{who.name}'s {effect.name} by {route_name}")  # fmt: skip
        else:
            await wait_until(lambda e=effect, m=message: e.happened(world, m), SETTLE_S,
                             what=f"{who.name}: {effect.name} by {route_name}")  # fmt: skip
            controls["caused"] += 1
        controls["controls"] += 1
    print(f"positive controls: {controls['controls']} ({controls['caused']} caused their "
          f"effect; the rest carried the message into the platform)")  # fmt: skip


async def test_no_principal_binds_to_another_owners_exchanges_with_a_wildcard(
    world: World,
) -> None:
    """Reading by binding: a queue of one's own bound with ``#`` to another owner's
    exchanges (its door, its events view, its task and result exchanges) or to a platform
    exchange is refused, but for what an admin may read (every namespace, the events).
    Positive control: each owner binds to its own names."""
    theirs = {
        "bob's door": names.door(Owner.namespace("bob")),
        "bob's events": names.ns_events_exchange("bob"),
        "bob's results": names.ns_results_exchange("bob"),
        "bob's tasks": names.ns_tasks_exchange("bob"),
        "ninja's door": names.door(Owner.node("ninja")),
        "the admins' door": names.ADMIN_DOOR,
        **{f"the platform's {exchange}": exchange for exchange in names.PLATFORM_EXCHANGES},
    }
    admin_may_read = {"bob's events", "bob's results", "bob's tasks", "bob's door",
                      f"the platform's {names.EVENTS_EXCHANGE}"}  # fmt: skip
    refused = allowed = 0
    for who in (ALICE, EDGE, REPLICA, ADMIN):
        for what, exchange in theirs.items():
            if who is ADMIN and what in admin_may_read:
                continue
            _mid, outcome = await _try(_bind_own_queue(exchange), world, who, EFFECTS[0].make(0))
            assert outcome == "refused by the broker", (who.name, what)
            refused += 1
    controls = ((BOB, names.ns_events_exchange("bob"), "#"),
                (ADMIN, names.EVENTS_EXCHANGE, "#"),
                (ALICE, names.ns_results_exchange("alice"), "#"),
                (EDGE, names.COMMANDS_EXCHANGE, names.node_command_keys("edge")))  # fmt: skip
    for who, own, key in controls:
        _mid, outcome = await _try(_bind_own_queue(own, key), world, who, EFFECTS[0].make(0))
        assert outcome == "sent", (who.name, own)
        allowed += 1
    print(f"\nbinding with '#': {refused} attempts refused, {allowed} controls bound")


def _bind_own_queue(exchange: str, key: str = "#") -> Route:
    async def attempt(world: World, who: Who, _message: Message, _mid: str) -> None:
        async with _channel(world, who) as (_bus, channel):
            if who is REPLICA:  # it may declare nothing: it tries with its own task queue
                queue = await channel.get_queue(names.task_queue("alice", "stereo"), ensure=False)
            else:
                queue = await channel.declare_queue(_own(who, "reader"), exclusive=True)
            await queue.bind(exchange, key)

    return attempt
