"""Namespace isolation enforced by RabbitMQ itself: every case is a real attempt.

The broker runs with its OAuth 2 backend (configured by `bus dev up`); this session's
signing key is added with `rabbitmqctl add_uaa_key`. Alice, Bob, a PC and a replica
connect with broker tokens minted by the auth service's code, and try things.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import jwt
import pytest
from aio_pika.abc import AbstractRobustChannel

from bus import names
from bus.codec import encode
from bus.connection import Bus
from bus.rpc import RpcClient
from bus.topology import QueueSpec, declare_app
from idlecloud.dev.services import RESOURCE_SERVER_ID, BrokerInfo
from schemas import CordonRequest, NodePresence, Owner, QuotaSet, RequestResult
from services.auth.tokens import SigningKey
from services.quota.service import QuotaManager

from .examples import BUSY, deploy
from .helpers import DeadLetterTap, wait_until
from .login import KEY_ID, Login

REFUSED = (aiormq.exceptions.ChannelAccessRefused, aiormq.exceptions.ChannelClosed)


@pytest.fixture
async def bob_queue(bus: Bus, unique: str) -> str:
    """Bob's app queues, declared by the platform (which may)."""
    channel = await bus.channel()
    await declare_app(channel, "bob", f"x{unique}")
    await channel.declare_exchange(names.ns_events_exchange("bob"), "topic", durable=True)
    await channel.close()
    return names.task_queue("bob", f"x{unique}")


async def refused(bus: Bus, attempt: Callable[[AbstractRobustChannel], Awaitable[Any]]) -> bool:
    """True if the broker refuses ``attempt`` (on a fresh channel of ``bus``)."""
    channel = await bus.channel()
    try:
        await attempt(channel)
    except REFUSED as error:
        assert "ACCESS_REFUSED" in str(error) or "access" in str(error).lower(), error
        return True
    finally:
        if not channel.is_closed:
            await channel.close()
    return False


async def publish(channel: AbstractRobustChannel, exchange: str, key: str, body: bytes) -> None:
    target = (
        channel.default_exchange
        if exchange == ""
        else await channel.get_exchange(exchange, ensure=False)
    )
    await target.publish(aio_pika.Message(body), routing_key=key)


async def ignore(_message: object) -> None:
    """A consumer that takes nothing in."""


async def consume(channel: AbstractRobustChannel, queue: str) -> None:
    await (await channel.get_queue(queue, ensure=False)).consume(ignore)


async def purge(channel: AbstractRobustChannel, queue: str) -> None:
    await (await channel.get_queue(queue, ensure=False)).purge()


async def bind(channel: AbstractRobustChannel, queue: str, exchange: str) -> None:
    await (await channel.get_queue(queue, ensure=False)).bind(exchange, "#")


@pytest.fixture
async def alice(login: Login) -> AsyncIterator[Bus]:
    connected = await login.connect("user", "alice")
    yield connected
    await connected.close()


async def test_alice_reaches_her_own_names_and_nothing_of_bobs(
    alice: Bus, bob_queue: str, unique: str
) -> None:
    own = QueueSpec(f"ns.alice.mine{unique}", auto_delete=True)
    assert not await refused(alice, lambda ch: own.declare(ch))
    assert not await refused(alice, lambda ch: consume(ch, own.name))
    body, _props = encode(deploy("alice", "stereo", f"req-{unique}"))
    alice_door = names.door(Owner.namespace("alice"))
    assert not await refused(alice, lambda ch: publish(ch, alice_door,
                                                       "ns.alice.deploy.stereo", body))  # fmt: skip

    bob_events = names.ns_events_exchange("bob")
    attempts = {
        "consume bob's queue": lambda ch: consume(ch, bob_queue),
        "purge bob's queue": lambda ch: purge(ch, bob_queue),
        "declare a name of bob's": lambda ch: QueueSpec(f"ns.bob.sneaky{unique}").declare(ch),
        "bind her queue to bob's events": lambda ch: bind(ch, own.name, bob_events),
        "bind her queue to the platform's events": lambda ch: bind(
            ch, own.name, names.EVENTS_EXCHANGE),
        "deploy into bob's namespace": lambda ch: publish(ch, names.door(Owner.namespace("bob")),
                                                          "ns.bob.deploy.stereo", body),
        "a key of bob's through her door": lambda ch: publish(ch, alice_door,
                                                              "ns.bob.deploy.stereo", body),
        "publish to the platform's requests": lambda ch: publish(ch, names.REQUESTS_EXCHANGE,
                                                                 "ns.alice.deploy.stereo", body),
        "redeclare her door as a fanout": lambda ch: ch.declare_exchange(alice_door, "fanout"),
        "reach bob's queue through the default exchange": lambda ch: publish(ch, "", bob_queue,
                                                                             body),
        "publish presence as a PC": lambda ch: publish(ch, names.door(Owner.node("edge")),
                                                       "node.edge.presence", body),
    }  # fmt: skip
    allowed = [what for what, attempt in attempts.items() if not await refused(alice, attempt)]
    assert allowed == []


async def test_a_body_naming_bob_under_alices_key_is_dead_lettered_by_the_platform(
    scratch: tuple[BrokerInfo, Bus], signing_key: SigningKey, unique: str
) -> None:
    broker, bus = scratch
    alice = await Login(broker, signing_key).connect("user", "alice")
    quota = QuotaManager()
    tap = await DeadLetterTap(quota._server.name).start(bus)
    await quota.start(bus)
    try:
        await wait_until(lambda: quota.leadership.leading, what="the quota manager to lead")
        client = await RpcClient(alice, Owner.namespace("alice")).start()
        forged = deploy("bob", "stereo", f"req-{unique}")  # bob's body...
        body, properties = encode(forged, reply_to=client.reply_queue, correlation_id="c1")
        channel = await alice.channel()  # ...under alice's own routing key: allowed to send
        await publish_with(channel, "ns.alice.deploy.stereo", body, properties, alice.user_name)
        await wait_until(lambda: bool(tap.messages), what="the dead letter")
        assert tap.reasons()[0] == (
            "DeployRequest for ns.bob belongs on ns.bob/ns.bob.deploy.stereo, "
            "but arrived on ns.alice/ns.alice.deploy.stereo"
        )
        assert ("bob", "stereo") not in quota.state.deployments
        await client.stop()
    finally:
        await quota.stop(1.0)
        await alice.close()


async def publish_with(
    channel: AbstractRobustChannel, key: str, body: bytes, properties: Any, user_id: str
) -> None:
    exchange = await channel.get_exchange(names.door(Owner.namespace("alice")), ensure=False)
    await exchange.publish(
        aio_pika.Message(body, headers=properties.headers, reply_to=properties.reply_to,
                         correlation_id=properties.correlation_id, content_type="application/json",
                         user_id=user_id),
        routing_key=key,
    )  # fmt: skip


async def test_a_pc_speaks_only_for_itself_and_a_replica_reads_only_its_task_queue(
    login: Login, bus: Bus, unique: str
) -> None:
    edge = await login.connect("node", "edge")
    try:
        body, _props = encode(NodePresence(node="edge", presence=BUSY))
        edge_door = names.door(Owner.node("edge"))
        assert not await refused(edge, lambda ch: publish(ch, edge_door,
                                                          "node.edge.presence", body))  # fmt: skip
        assert await refused(edge, lambda ch: publish(ch, edge_door,
                                                      "node.ninja.presence", body))  # fmt: skip
        assert await refused(edge, lambda ch: publish(ch, names.EVENTS_EXCHANGE,
                                                      "node.edge.presence", body))  # fmt: skip
    finally:
        await edge.close()
    channel = await bus.channel()
    await declare_app(channel, "alice", f"s{unique}")
    await declare_app(channel, "alice", f"o{unique}")
    await channel.close()
    replica = await login.connect("replica", "alice", app=f"s{unique}")
    try:
        own, other = (
            names.task_queue("alice", f"s{unique}"),
            names.task_queue("alice", f"o{unique}"),
        )
        assert not await refused(replica, lambda ch: consume(ch, own))
        assert await refused(replica, lambda ch: consume(ch, other))
        assert await refused(replica, lambda ch: QueueSpec(f"ns.alice.q{unique}").declare(ch))
        assert await refused(replica, lambda ch: publish(ch, names.door(Owner.namespace("alice")),
                                                         "ns.alice.deploy.x", b"{}"))  # fmt: skip
    finally:
        await replica.close()


@pytest.mark.parametrize("flaw", ["expired", "forged", "wrong audience", "alg none"])
async def test_a_bad_token_is_refused_at_login(login: Login, flaw: str, tmp_path: Path) -> None:
    now = int(time.time())
    claims = {"sub": "alice", "aud": [RESOURCE_SERVER_ID], "iat": now, "exp": now + 300,
              "scope": [f"{RESOURCE_SERVER_ID}.read:*/*"], "jti": uuid.uuid4().hex}  # fmt: skip
    trusted = login.key.broker_key(KEY_ID)  # the broker trusts it: only the flaw is wrong
    kid = {"kid": trusted.kid}
    if flaw == "expired":
        token = jwt.encode({**claims, "iat": now - 900, "exp": now - 300}, trusted.secret,
                           algorithm="HS256", headers=kid)  # fmt: skip
    elif flaw == "forged":  # the trusted key's id, another secret
        token = jwt.encode(claims, b"x" * 32, algorithm="HS256", headers=kid)
    elif flaw == "wrong audience":
        token = jwt.encode({**claims, "aud": ["someone-else"]}, trusted.secret,
                           algorithm="HS256", headers=kid)  # fmt: skip
    else:
        token = jwt.encode(claims, None, algorithm="none", headers=kid)
    with pytest.raises(aiormq.exceptions.ProbableAuthenticationError):
        await aiormq.connect(login.url(token))  # aio-pika's leaves an unawaited close behind


async def test_a_namespace_may_deploy_the_moment_its_quota_is_accepted(
    scratch: tuple[BrokerInfo, Bus], unique: str
) -> None:
    """A quota's acceptance is sent only once the namespace's door is open, so a deploy
    sent the moment it arrives is routed. The door used to be declared beside the reply
    and could come after it: a deploy right after the quota then found no binding ("no
    queue is bound to ns.alice", seen once in bench/goodput.py). The test's quota manager
    announces nothing, so only the reply's order opens the door in time."""
    _broker, bus = scratch

    class LateAnnouncer(QuotaManager):
        """Announces each quota only after everyone was told (here: never), the worst
        order the old code allowed."""

        async def _announce(self, request: QuotaSet | CordonRequest) -> None:
            return None

    quota = LateAnnouncer()
    await quota.start(bus)
    admin = await RpcClient(bus, Owner.platform()).start()
    try:
        await wait_until(lambda: quota.leadership.leading, what="the quota manager to lead")
        for index in range(10):  # ten new namespaces, each deploying at once
            namespace = f"n{index}{unique}"
            accepted = await admin.call(QuotaSet(
                request_id=f"quota-{index}-{unique}", namespace=namespace,
                cpu_millicores=4000, memory_mib=8192,
            ), RequestResult, timeout_s=20)  # fmt: skip
            assert accepted.accepted, accepted.reason
            user = await RpcClient(bus, Owner.namespace(namespace)).start()
            try:
                request = deploy(namespace, "stereo", f"req-{index}-{unique}")
                deployed = await user.call(request.model_copy(update={"replicas": 2}),
                                           RequestResult, timeout_s=20)  # fmt: skip
            finally:
                await user.stop()
            assert deployed.accepted, deployed.reason
    finally:
        await admin.stop()
        await quota.stop(1.0)
