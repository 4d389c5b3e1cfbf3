"""The message catalogue: round trips, validation of names and bounds, JSON Schema export."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import schemas
from schemas import (
    MESSAGES,
    DeploymentStatus,
    DeployRequest,
    Message,
    MetricSample,
    NodeHeartbeat,
    ReplicaStatus,
    StartReplica,
    export_json_schemas,
    utc_now,
)
from schemas.catalogue import json_schema

from .examples import EXAMPLES
from .jsonschema_strategy import documents


def _concrete_messages(cls: type[Message]) -> set[type[Message]]:
    found: set[type[Message]] = set()
    for sub in cls.__subclasses__():
        if "schema_name" in sub.__dict__:
            found.add(sub)
        found |= _concrete_messages(sub)
    return found


def test_catalogue_lists_every_message_once() -> None:
    assert set(MESSAGES) == _concrete_messages(Message)
    assert len({cls.schema_name for cls in MESSAGES}) == len(MESSAGES)
    assert set(EXAMPLES) == set(MESSAGES), "every message needs an example in tests/examples.py"


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.schema_name)
def test_example_round_trips_through_json(cls: type[Message]) -> None:
    message = EXAMPLES[cls]
    assert cls.model_validate_json(message.model_dump_json()) == message


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.schema_name)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_anything_the_json_schema_allows_round_trips(
    cls: type[Message], data: st.DataObject
) -> None:
    """Instances generated from the exported JSON Schema are accepted and round-trip."""
    document = data.draw(documents(json_schema(cls)))
    message = cls.model_validate_json(json.dumps(document))
    assert cls.model_validate_json(message.model_dump_json()) == message


def _deploy(**changes: Any) -> dict[str, Any]:
    return {**EXAMPLES[DeployRequest].model_dump(mode="json"), **changes}


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"namespace": "Alice"}, "namespace"),
        ({"namespace": "alice.bob"}, "namespace"),
        ({"namespace": "-alice"}, "namespace"),
        ({"namespace": "a" * 64}, "namespace"),
        ({"app": "stereo.#"}, "app"),
        ({"image": "Bad Image!"}, "image"),
        ({"replicas": -1}, "replicas"),
        ({"replicas": 10_001}, "replicas"),
        ({"cpu_millicores": 0}, "cpu_millicores"),
        ({"memory_mib": 10**12}, "memory_mib"),
        ({"env": {"IDLECLOUD_TOKEN_FILE": "/x"}}, "reserved"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"ports": [0]}, "ports"),
        ({"command": ["x" * 5000]}, "command"),
        ({"surprise": 1}, "surprise"),
        ({"request_id": "short"}, "request_id"),
        ({"replicas": 3.0}, "replicas"),
        ({"replicas": True}, "replicas"),
        ({"replicas": "3"}, "replicas"),
    ],
)
def test_deploy_request_refuses_bad_fields(changes: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError) as caught:
        DeployRequest.model_validate_json(json.dumps(_deploy(**changes)))
    assert complaint in str(caught.value)


def test_messages_are_frozen() -> None:
    message = EXAMPLES[DeployRequest]
    with pytest.raises(ValidationError):
        message.replicas = 3  # type: ignore[misc]


def test_a_token_never_appears_in_repr() -> None:
    command = EXAMPLES[StartReplica]
    assert isinstance(command, StartReplica)
    assert command.token not in repr(command)
    assert command.token in command.model_dump_json()


def test_export_writes_a_schema_per_message_and_an_index(tmp_path: Path) -> None:
    written = export_json_schemas(tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [entry["name"] for entry in index["messages"]] == [c.schema_name for c in MESSAGES]
    assert len(written) == len(MESSAGES) + 1
    deploy = json.loads((tmp_path / "DeployRequest.v1.json").read_text())
    assert deploy["x-amqp-headers"] == {
        schemas.SCHEMA_HEADER: "DeployRequest",
        schemas.SCHEMA_VERSION_HEADER: 1,
    }
    assert deploy["additionalProperties"] is False
    assert "namespace" in deploy["required"]


@pytest.mark.parametrize("field", ["seq", "epoch"])
def test_counts_on_the_wire_stay_within_what_json_keeps_exact(field: str) -> None:
    cls = NodeHeartbeat if field == "seq" else StartReplica
    document = EXAMPLES[cls].model_dump(mode="json")
    cls.model_validate_json(json.dumps({**document, field: 2**53 - 1}))
    for wrong in (2**53, 2**70, -1):
        with pytest.raises(ValidationError, match=field):
            cls.model_validate_json(json.dumps({**document, field: wrong}))


@pytest.mark.parametrize("cls", [NodeHeartbeat, MetricSample, ReplicaStatus, DeploymentStatus])
def test_an_event_time_no_clock_could_say_is_refused_with_the_reason(cls: type[Message]) -> None:
    document = EXAMPLES[cls].model_dump(mode="json")
    field = "sent_at" if cls is NodeHeartbeat else "at"
    now = utc_now()
    for fine in (now, now + timedelta(hours=23), now - timedelta(days=3000)):
        cls.model_validate_json(json.dumps({**document, field: fine.isoformat()}))
    for wrong, says in (("9999-12-31T23:59:59+00:00", "more than a day ahead"),
                        ("1970-01-01T00:00:00+00:00", "more than ten years before")):  # fmt: skip
        with pytest.raises(ValidationError, match=says):
            cls.model_validate_json(json.dumps({**document, field: wrong}))


def _numbers(node: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every integer or number in a JSON Schema, with where it is."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") in ("integer", "number"):
            found.append((path, node))
        for key, value in node.items():
            found += _numbers(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _numbers(value, f"{path}[{index}]")
    return found


def test_every_number_on_the_wire_has_both_bounds() -> None:
    unbounded = [
        path
        for cls in MESSAGES
        for path, node in _numbers(json_schema(cls), cls.__name__)
        if not (
            {"minimum", "exclusiveMinimum"} & node.keys()
            and {"maximum", "exclusiveMaximum"} & node.keys()
        )
    ]
    assert unbounded == []


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.__name__)
def test_one_past_any_bound_of_a_top_level_number_is_refused(cls: type[Message]) -> None:
    document = EXAMPLES[cls].model_dump(mode="json")
    properties = json_schema(cls).get("properties", {})
    for field, node in properties.items():
        if node.get("type") != "integer":
            continue
        cls.model_validate_json(json.dumps({**document, field: node["maximum"]}))
        for wrong in (node["maximum"] + 1, node["minimum"] - 1):
            with pytest.raises(ValidationError, match=field):
                cls.model_validate_json(json.dumps({**document, field: wrong}))


amounts = st.builds(schemas.Amount, st.integers(-(10**7), 10**7), st.integers(-(10**9), 10**9))


@given(amounts, amounts, st.integers(0, 1000))
def test_amounts_add_subtract_and_multiply_like_pairs_of_numbers(
    a: schemas.Amount, b: schemas.Amount, count: int
) -> None:
    assert (a + b) - b == a
    assert a * count == sum([a] * count, schemas.ZERO) == count * a
    fits = a.cpu_millicores <= b.cpu_millicores and a.memory_mib <= b.memory_mib
    assert (a.shortfall(b) is None) == fits


def test_the_fit_check_names_what_is_short_and_the_wire_form_is_bounded() -> None:
    room = schemas.Amount(1000, 512)
    assert schemas.Amount(1000, 512).shortfall(room) is None
    assert schemas.Amount(1001, 512).shortfall(room) == "CPU"
    assert schemas.Amount(10, 513).shortfall(room) == "memory"
    assert schemas.Amount(1001, 513).shortfall(room) == "CPU and memory"
    assert schemas.Amount(-5, 2**40).wire() == schemas.Resources(
        cpu_millicores=0, memory_mib=schemas.MAX_MEMORY_MIB
    )
    assert schemas.Amount.of(room.wire()) == room
    assert schemas.Amount(6000, 3072).share_of(schemas.Amount(12_000, 4096)) == 0.75
