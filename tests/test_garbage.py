"""Hostile input fed to a live consumer is dead-lettered with its reason; valid input flows.

Hypothesis generates garbage of every kind (random bytes, wrong types, missing fields,
huge strings, wrong schema name or version, missing headers, a body that names another
namespace than its routing key). Each piece is published between two valid messages; the
consumer must dead-letter the garbage with a reason that says what was wrong and handle
every valid message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus import names
from bus.codec import MAX_BODY_BYTES, Delivery, encode
from bus.connection import Bus
from bus.consumer import Consumer
from bus.topology import QueueSpec
from schemas import SCHEMA_HEADER, SCHEMA_VERSION_HEADER, DeployRequest

from .examples import deploy
from .helpers import DeadLetterTap, open_namespace, wait_until

NAMESPACE = "garbage"
KEY = f"ns.{NAMESPACE}.deploy.stereo"
GOOD_HEADERS: dict[str, Any] = {SCHEMA_HEADER: "DeployRequest", SCHEMA_VERSION_HEADER: 1}
VALID = deploy(NAMESPACE, "stereo").model_dump(mode="json")
REQUIRED = ("request_id", "namespace", "app", "image")


@dataclass(frozen=True)
class Garbage:
    body: bytes
    headers: dict[str, Any]
    routing_key: str
    complaint: str


def _json(document: Any) -> bytes:
    return json.dumps(document).encode()


wrong_values = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(), st.lists(st.integers())
)

garbage = st.one_of(
    st.binary(max_size=2048).map(
        lambda body: Garbage(body, GOOD_HEADERS, KEY, "invalid DeployRequest")
    ),
    st.tuples(st.sampled_from(["replicas", "cpu_millicores", "namespace", "env"]), wrong_values)
    .filter(lambda pair: not (pair[0] in ("replicas", "cpu_millicores") and type(pair[1]) is int))
    .map(
        lambda pair: Garbage(
            _json({**VALID, pair[0]: pair[1]}),
            GOOD_HEADERS,
            KEY,
            f"invalid DeployRequest: {pair[0]}",
        )
    ),
    st.sampled_from(REQUIRED).map(
        lambda field: Garbage(
            _json({k: v for k, v in VALID.items() if k != field}),
            GOOD_HEADERS,
            KEY,
            f"{field}: Field required",
        )
    ),
    st.tuples(st.sampled_from(["image", "app", "request_id"]), st.integers(5_000, 200_000)).map(
        lambda pair: Garbage(_json({**VALID, pair[0]: "x" * pair[1]}), GOOD_HEADERS, KEY, pair[0])
    ),
    st.one_of(st.integers(2, 99), st.just(0), st.just("1"), st.just(True)).map(
        lambda version: Garbage(
            _json(VALID), {**GOOD_HEADERS, SCHEMA_VERSION_HEADER: version}, KEY, "version"
        )
    ),
    st.one_of(st.just("ScaleRequest"), st.text(max_size=300)).map(
        lambda name: Garbage(
            _json(VALID), {**GOOD_HEADERS, SCHEMA_HEADER: name}, KEY, "is not accepted here"
        )
    ),
    st.just(Garbage(_json(VALID), {}, KEY, f"missing or non-text header {SCHEMA_HEADER!r}")),
    st.sampled_from(["bob", "alice"]).map(
        lambda other: Garbage(
            _json({**VALID, "namespace": other}), GOOD_HEADERS, KEY, f"for ns.{other} belongs on"
        )
    ),
    st.sampled_from(["other-app", "stereo-2"]).map(
        lambda app: Garbage(
            _json({**VALID, "app": app}), GOOD_HEADERS, KEY, f"ns.{NAMESPACE}.deploy.{app}"
        )
    ),
)


class Rig:
    """A live consumer of deploy requests for namespace ``garbage`` and a dead-letter tap."""

    def __init__(self, bus: Bus, unique: str) -> None:
        self.bus = bus
        self.handled: list[str] = []
        self.consumer = Consumer(
            QueueSpec.quorum(
                names.service_queue(f"garbage-{unique}", "requests"),
                (names.REQUESTS_EXCHANGE, f"ns.{NAMESPACE}.#"),
            ),
            [DeployRequest],
            self._handle,
        )
        self.tap = DeadLetterTap(self.consumer.name)
        self.sent_valid = 0

    async def _handle(self, message: DeployRequest, _delivery: Delivery) -> None:
        self.handled.append(message.request_id)

    async def send_valid(self) -> None:
        self.sent_valid += 1
        await self.bus.publish(deploy(NAMESPACE, "stereo", f"valid-{self.sent_valid:06d}"))

    async def send(self, item: Garbage) -> None:
        _body, properties = encode(deploy(NAMESPACE))
        properties.headers = item.headers
        await self.bus.publish_raw(
            names.Route(names.REQUESTS_EXCHANGE, item.routing_key), item.body, properties
        )


@pytest.fixture
async def rig(bus: Bus, unique: str) -> AsyncIterator[Rig]:
    rig = Rig(bus, unique)
    await open_namespace(bus, NAMESPACE)
    await rig.tap.start(bus)
    await rig.consumer.start(bus)
    yield rig
    await rig.consumer.stop()


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(item=garbage)
async def test_garbage_is_dead_lettered_with_its_reason_and_valid_messages_flow(
    rig: Rig, item: Garbage
) -> None:
    dead_before = len(rig.tap.messages)
    await rig.send_valid()
    await rig.send(item)
    await rig.send_valid()
    await wait_until(
        lambda: len(rig.handled) == rig.sent_valid and len(rig.tap.messages) == dead_before + 1,
        what="two valid messages handled and one dead-lettered",
    )
    reason = rig.tap.reasons()[-1]
    assert item.complaint in reason, (item.complaint, reason)
    assert rig.tap.header(-1, "idlecloud-original-routing-key") == item.routing_key


async def test_an_oversized_body_is_refused_unread(rig: Rig) -> None:
    size = MAX_BODY_BYTES + 1
    await rig.send(Garbage(b"{" * size, GOOD_HEADERS, KEY, "exceeds"))
    await rig.send_valid()
    await wait_until(lambda: len(rig.tap.messages) == 1 and len(rig.handled) == 1)
    assert rig.tap.reasons() == [f"body of {size} bytes exceeds the limit of {MAX_BODY_BYTES}"]
    assert rig.tap.header(0, "idlecloud-original-body-bytes") == size
    assert len(rig.tap.messages[0].body) == 64 * 1024
