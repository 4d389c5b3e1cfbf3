"""A tick's starts as messages: packed per PC where its agent takes it, never mixed up
(pure), and the token request that asks for many replicas' tokens at once."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from bus.codec import MAX_BODY_BYTES, encode
from schemas import (
    REPLICA_TOKENS_MAX,
    STARTS_PER_MESSAGE_MAX,
    DeployRequest,
    ReplicaTokenReply,
    ReplicaTokenRequest,
    StartReplica,
    StartReplicas,
    StopReplicas,
)
from services.placement.commands import BATCH_BYTES_MAX, start_messages, stop_messages
from services.placement.reconciler import Start, Stop
from services.state import Spec


def spec(app: str, env_bytes: int = 0) -> Spec:
    request = DeployRequest(
        request_id=f"deploy-{app}", namespace="alice", app=app, image="local",
        command=("python", "-m", "work"),
        env={f"BIG{i}": "x" * 4000 for i in range(env_bytes // 4000)},
        replicas=100, cpu_millicores=100, memory_mib=128,
    )  # fmt: skip
    return Spec(request, request.replicas, generation=3)


def starts_on(nodes: list[str], app: Spec) -> list[tuple[Start, str]]:
    return [(Start(f"{app.request.app}-3-{i:08x}", node, app), f"token-{i}")
            for i, node in enumerate(nodes)]  # fmt: skip


def unpacked(messages: list[StartReplica | StartReplicas]) -> list[tuple[str, str, str]]:
    """(PC, replica, token) of every start the messages carry."""
    carried = []
    for message in messages:
        ones = message.starts if isinstance(message, StartReplicas) else (message,)
        carried += [(message.node, one.replica_id, one.token) for one in ones]
    return carried


def test_starts_for_one_pc_travel_together_and_a_lone_start_alone() -> None:
    starts = starts_on(["pc1", "pc2", "pc1", "pc1", "pc3", "pc2"], spec("sim"))
    messages = start_messages(starts, epoch=9, batched=lambda node: node != "pc3")
    kinds = [(type(m).__name__, m.node) for m in messages]
    assert kinds == [("StartReplicas", "pc1"), ("StartReplicas", "pc2"), ("StartReplica", "pc3")]
    assert all(m.epoch == 9 for m in messages)
    assert sorted(unpacked(messages)) == sorted((s.node, s.replica_id, t) for s, t in starts)
    first = messages[0]
    assert isinstance(first, StartReplicas)
    assert {one.image for one in first.starts} == {"local"}
    assert first.starts[0].reservation.cpu_millicores == 100


def test_a_pc_whose_agent_does_not_say_it_takes_batches_gets_one_message_a_start() -> None:
    starts = starts_on(["old"] * 5, spec("sim"))
    messages = start_messages(starts, epoch=1, batched=lambda _node: False)
    assert [type(m) for m in messages] == [StartReplica] * 5
    assert unpacked(messages) == [(s.node, s.replica_id, t) for s, t in starts]


def test_batches_stop_at_the_count_and_byte_limits_and_stay_under_the_body_limit() -> None:
    many = start_messages(starts_on(["pc"] * 150, spec("small")), 1, lambda _node: True)
    assert [len(m.starts) for m in many if isinstance(m, StartReplicas)] == [64, 64, 22]
    assert STARTS_PER_MESSAGE_MAX == 64
    big = spec("big", env_bytes=60_000)  # a workload of ~60 KB: four to a message
    heavy = start_messages(starts_on(["pc"] * 10, big), 1, lambda _node: True)
    sizes = [len(m.starts) for m in heavy if isinstance(m, StartReplicas)]
    assert sum(sizes) == 10 and max(sizes) * 60_000 <= BATCH_BYTES_MAX
    assert all(len(encode(m)[0]) < MAX_BODY_BYTES / 2 for m in heavy)


@given(
    st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=200), st.sets(st.sampled_from("abcd"))
)
def test_every_start_is_carried_once_with_its_own_token(
    nodes: list[str], batched: set[str]
) -> None:
    starts = starts_on(nodes, spec("sim"))
    messages = start_messages(starts, epoch=2, batched=lambda node: node in batched)
    assert sorted(unpacked(messages)) == sorted((s.node, s.replica_id, t) for s, t in starts)
    for message in messages:
        if isinstance(message, StartReplicas):
            assert message.node in batched and 2 <= len(message.starts) <= STARTS_PER_MESSAGE_MAX


def test_stops_for_one_pc_travel_together_and_a_lone_stop_alone() -> None:
    stops = [
        Stop(f"r{i}", node, f"reason {i}", grace_s=i % 2 * 10.0)
        for i, node in enumerate(["pc1", "pc2", "pc1", "pc3", "pc1", "old", "old"])
    ]
    messages = stop_messages(stops, epoch=4, batched=lambda node: node != "old")
    kinds = [(type(m).__name__, m.node) for m in messages]
    assert kinds == [("StopReplicas", "pc1"), ("StopReplica", "pc2"), ("StopReplica", "pc3"),
                     ("StopReplica", "old"), ("StopReplica", "old")]  # fmt: skip
    carried = []
    for message in messages:
        assert message.epoch == 4
        ones = message.stops if isinstance(message, StopReplicas) else (message,)
        carried += [(message.node, one.replica_id, one.reason, one.grace_s) for one in ones]
    assert sorted(carried) == sorted((s.node, s.replica_id, s.reason, s.grace_s) for s in stops)


def test_a_version_1_token_request_and_reply_read_as_one_replica() -> None:
    """An auth service or placement of the version before reads and answers one replica."""
    request = ReplicaTokenRequest.from_older(
        1, json.dumps({"namespace": "alice", "app": "stereo", "replica_id": "r-1"}).encode()
    )
    assert [(r.namespace, r.app, r.replica_id) for r in request.replicas] == [
        ("alice", "stereo", "r-1")
    ]
    at = datetime(2026, 12, 7, tzinfo=UTC).isoformat()
    reply = ReplicaTokenReply.from_older(
        1, json.dumps({"replica_id": "r-1", "token": "eyJ.a.b", "expires_at": at}).encode()
    )
    assert [(t.replica_id, t.token) for t in reply.tokens] == [("r-1", "eyJ.a.b")]
    assert REPLICA_TOKENS_MAX == 200
