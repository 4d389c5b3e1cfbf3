"""Garbage on every route the platform consumes is dead-lettered, naming a real queue.

The real consumers run on a vhost of the test's own: the quota manager, placement (its
PCs' events and its queries), the auth service, the metrics writer (a real InfluxDB), the
Kubernetes bridge (the stand-in API server, as in ``test_kubebridge.py``: no Kubernetes
API server can run here) and a PC's agent. For every binding of every consumer's queue,
bodies that are not what they claim (not JSON, JSON of the wrong shape, too deep) are
published under a routing key the binding matches. Each consumer dead-letters what
reached it, with a reason, under the name of its own queue, which exists; and each
still serves valid input afterwards.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from aio_pika.abc import AbstractIncomingMessage

from bus import names
from bus.codec import encode
from bus.connection import Bus
from bus.consumer import DEAD_REASON_HEADER, QueueConsumer
from bus.rpc import RpcClient
from bus.topology import QueueSpec
from idlecloud.dev.influx import INFLUX_URL, scratch_database
from idlecloud.dev.services import BrokerInfo, free_port
from nodeagent.agent import AgentSettings
from nodeagent.policy import PolicySettings
from schemas import (
    SCHEMA_HEADER,
    SCHEMA_VERSION_HEADER,
    Amount,
    NodesQuery,
    NodesReply,
    Owner,
    QuotaSet,
    RequestResult,
)
from services.auth.service import AuthService, AuthSettings
from services.auth.tokens import SigningKey
from services.kubebridge.service import BridgeSettings, KubeBridge
from services.metrics.influx import InfluxV1
from services.metrics.writer import MetricsWriter
from services.placement.service import Placement
from services.quota.service import QuotaManager

from .helpers import running_agent, wait_until
from .kube_standin import StandIn

#: Each garbage body, sent once per binding.
BODIES = (b"\xff not json", b"[1, 2, 3]", b'{"a":' * 5000 + b"1" + b"}" * 5000)


def concrete(pattern: str, node: str) -> str:
    """A routing key the binding ``pattern`` matches, naming ``node`` where a PC goes."""
    parts = pattern.split(".")
    if parts[0] == "node" and len(parts) > 1:
        parts[1] = node
    return ".".join("garbage" if part in ("*", "#") else part for part in parts)


def topic_match(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` zero or more."""

    def match(words: list[str], keys: list[str]) -> bool:
        if not words:
            return not keys
        if words[0] == "#":
            return any(match(words[1:], keys[i:]) for i in range(len(keys) + 1))
        return bool(keys) and words[0] in ("*", keys[0]) and match(words[1:], keys[1:])

    return match(pattern.split("."), key.split("."))


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_garbage_on_every_consumed_route_is_dead_lettered_under_a_real_queue(
    scratch: tuple[BrokerInfo, Bus], unique: str, tmp_path: Path
) -> None:
    broker, bus = scratch
    dead: list[AbstractIncomingMessage] = []

    async def on_dead(message: AbstractIncomingMessage) -> None:
        dead.append(message)

    channel = await bus.channel()
    tap = await QueueSpec.private(
        f"idlecloud.test.dead.{unique}", (names.DEAD_LETTER_EXCHANGE, "#")
    ).declare(channel)
    await tap.consume(on_dead, no_ack=True)
    api = await StandIn().start()
    key = SigningKey.generate()
    private, _public = key.save(tmp_path / "keys")
    quota, placement = QuotaManager(retry_s=0.2), Placement(retry_s=0.2)
    auth = AuthService(
        AuthSettings(private, vhost=broker.vhost, http_port=free_port()), retry_s=0.2
    )
    bridge = KubeBridge(
        BridgeSettings(frozenset({"lab"}), kubeconfig=api.kubeconfig(tmp_path)), retry_s=0.2
    )
    node = f"pc{unique}"
    settings = AgentSettings(
        node=node, capacity=Amount(cpu_millicores=2000, memory_mib=2048),
        desk_reserve=Amount(), utmp_path=tmp_path / "utmp", policy=PolicySettings(start_idle_s=0),
    )  # fmt: skip
    with scratch_database() as database:
        writer = MetricsWriter(InfluxV1(INFLUX_URL, database), flush_s=0.2)
        services = (quota, placement, auth, bridge, writer)
        for service in services:
            await service.start(bus)
        try:
            async with running_agent(bus, settings, tmp_path / "state") as agent:
                await wait_until(
                    lambda: all(s.leadership.leading for s in (quota, placement, auth, bridge)),
                    15, "every service to lead",
                )  # fmt: skip
                consumers: list[QueueConsumer] = [
                    quota._server, placement._events, placement._queries, auth._server,
                    bridge._events, writer, agent._commands,
                ]  # fmt: skip
                sent: Counter[str] = Counter()  # expected dead letters, by queue
                for consumer in consumers:
                    for exchange, pattern in consumer.spec.bindings:
                        routing_key = concrete(pattern, node)
                        hearers = [
                            c.spec.name for c in consumers
                            if any(e == exchange and topic_match(p, routing_key)
                                   for e, p in c.spec.bindings)
                        ]  # fmt: skip
                        for body in BODIES:
                            _body, properties = encode(NodesQuery())
                            properties.headers = {SCHEMA_HEADER: "NodeHeartbeat",
                                                  SCHEMA_VERSION_HEADER: 1}  # fmt: skip
                            await bus.publish_raw(
                                names.Route(exchange, routing_key), body, properties
                            )
                            sent.update(hearers)
                await wait_until(lambda: len(dead) >= sum(sent.values()), 60, "every dead letter")
                await asyncio.sleep(1.0)  # nothing more (no message came back)
                by_queue = Counter(str((m.headers or {})["idlecloud-dead-queue"]) for m in dead)
                print(f"{sum(sent.values())} dead letters from {len(sent)} queues: {by_queue}")
                assert by_queue == sent
                assert all((m.headers or {}).get(DEAD_REASON_HEADER) for m in dead)
                check = await bus.channel()
                for queue in by_queue:  # each names a queue that exists
                    await check.declare_queue(queue, passive=True)
                # and each still serves
                admin = await RpcClient(bus, Owner.platform()).start()
                try:
                    result = await admin.call(QuotaSet(
                        request_id=f"after-{unique}", namespace="after", cpu_millicores=1000,
                        memory_mib=1024,
                    ), RequestResult, timeout_s=20)  # fmt: skip
                    assert result.accepted, result.reason
                    nodes = await admin.call(NodesQuery(), NodesReply, timeout_s=20)
                    assert node in {view.node for view in nodes.nodes}
                finally:
                    await admin.stop()
        finally:
            for service in reversed(services):
                await service.stop(1.0)
            await api.stop()
