"""Who may send what, from the sender the broker vouches for (pure: no broker involved).

The live attempts (carbon copies, dead-lettering, alternate exchanges) are in
``tests/test_isolation.py``; here every message of the catalogue is tried from every kind
of sender, and the Erlang text that changes the broker's keys is checked.
"""

from __future__ import annotations

import base64
import json
import re

import pytest

from bus.codec import Delivery, decode, encode
from bus.errors import InvalidMessage
from bus.trust import PLATFORM, Principal, may_send, sender_refusal
from schemas import MESSAGES, Message, UsageQuery
from services.auth.keyring import KEYS_PER_CHANGE, change_expression
from services.auth.tokens import SigningKey

from .examples import EXAMPLES

ALICE = Principal.token("user", "alice", "k1")
BOB = Principal.token("user", "bob", "k2")
EDGE = Principal.token("node", "edge", "k3")
ADMIN = Principal.token("admin", "ops", "k4")
REPLICA = Principal.token("replica", "alice", "r-1")

#: What each kind of sender may send, by schema name (the examples speak for namespace
#: ``alice`` and PC ``edge``).
_JOBS = frozenset({"JobSubmit", "JobSeal", "JobCancel", "JobDelete", "JobsQuery", "UsageQuery"})
ALLOWED: dict[Principal, frozenset[str]] = {
    ALICE: frozenset({"DeployRequest", "ScaleRequest", "DeleteRequest", "AppsQuery"}) | _JOBS,
    BOB: frozenset(),
    EDGE: frozenset(
        {"NodeHeartbeat", "NodeAlive", "NodePresence", "ReplicaStatus", "MetricSample", "LogBatch"}
    ),
    ADMIN: frozenset(
        {
            "DeployRequest",
            "ScaleRequest",
            "DeleteRequest",
            "AppsQuery",
            "QuotaSet",
            "CordonRequest",
            "TokenIssue",
            "TokenRevoke",
            "NodesQuery",
            "KeysQuery",
        }
    )
    | _JOBS,
    REPLICA: frozenset(),
}


def test_usage_by_pc_or_of_everyone_is_an_admins_question_even_for_her_namespace() -> None:
    since = EXAMPLES[UsageQuery].since  # type: ignore[attr-defined]
    for question in (UsageQuery(namespace="alice", since=since, by="pc"), UsageQuery(since=since)):
        assert not may_send(ALICE, question) and may_send(ADMIN, question)


def test_the_examples_speak_for_alice_and_edge() -> None:
    owners = {str(EXAMPLES[cls].owner()) for cls in MESSAGES}
    assert owners <= {"ns.alice", "node.edge", "idlecloud"}, owners


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.schema_name)
def test_each_message_is_sent_only_by_those_who_speak_for_its_owner(cls: type[Message]) -> None:
    message = EXAMPLES[cls]
    assert may_send(PLATFORM, message)
    for sender, allowed in ALLOWED.items():
        assert may_send(sender, message) == (cls.schema_name in allowed), (sender, cls)


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [
        ("user:alice:k1", ALICE),
        ("node:edge:k3", EDGE),
        ("replica:alice:r-1", REPLICA),
        ("guest", PLATFORM),
        ("idlecloud-services", PLATFORM),
        (None, None),
        ("", None),
        ("user:Alice:k1", None),  # not a DNS label
        ("user:alice", None),
        ("user:alice:k1:extra", None),  # the key part may not hold a colon
        ("node:edge.ninja:k3", None),  # a dot would reach into another owner's prefix
    ],
)
def test_a_user_id_names_a_principal(user_id: str | None, expected: Principal | None) -> None:
    assert Principal.from_user_id(user_id) == expected


def test_a_token_principal_round_trips_through_its_user_name() -> None:
    for principal in (ALICE, EDGE, ADMIN, REPLICA):
        assert Principal.from_user_id(principal.user_name) == principal
    with pytest.raises(ValueError, match="not a principal"):
        Principal.token("user", "alice", "has:colon")


def delivery_from(message: Message, user_id: str | None) -> Delivery:
    from bus import names

    body, properties = encode(message)
    route = names.route(message)
    return Delivery(route.exchange, route.routing_key, body, dict(properties.headers or {}),
                    user_id=user_id)  # fmt: skip


def test_decode_refuses_a_message_whose_sender_may_not_send_it() -> None:
    deploy = EXAMPLES[MESSAGES[[c.schema_name for c in MESSAGES].index("DeployRequest")]]
    accepts = {type(deploy).schema_name: type(deploy)}
    assert decode(delivery_from(deploy, ALICE.user_name), accepts) == deploy
    assert decode(delivery_from(deploy, "guest"), accepts) == deploy
    with pytest.raises(InvalidMessage, match=r"user bob may not send DeployRequest for ns\.alice"):
        decode(delivery_from(deploy, BOB.user_name), accepts)
    with pytest.raises(InvalidMessage, match="no user_id: the broker vouches for no sender"):
        decode(delivery_from(deploy, None), accepts)
    assert sender_refusal(EDGE.user_name, deploy) == (
        "node edge may not send DeployRequest for ns.alice"
    )


def test_the_keyring_expression_adds_and_removes_only_the_named_keys() -> None:
    key = SigningKey.generate()
    trusted = [key.broker_key("k1"), key.broker_key("k2")]
    text = change_expression(trusted, ["idlecloud-x.k9"])
    spelled = re.findall(r'base64:decode\(<<"([A-Za-z0-9+/=]*)">>\)', text)
    decoded = [base64.b64decode(part).decode() for part in spelled]
    assert decoded[0] == trusted[0].kid and decoded[2] == trusted[1].kid
    assert json.loads(decoded[1]) == {"kty": "oct", "alg": "HS256", "k": json.loads(
        trusted[0].jwk())["k"]}  # fmt: skip
    assert decoded[4] == "idlecloud-x.k9"
    assert '"' not in text.replace('<<"', "").replace('">>', "")  # rabbitmqctl drops \"
    assert "maps:without(Forget, K)" in text and "global:trans" in text
    batch = [key.broker_key(f"{index:016x}") for index in range(KEYS_PER_CHANGE)]
    full = change_expression(batch, [k.kid for k in batch], close_on="a-vhost", spare="x:y:z")
    assert len(full.encode()) < 128 * 1024  # a full batch fits one command-line argument


def test_each_api_key_has_its_own_broker_key_and_replicas_share_one() -> None:
    key = SigningKey.generate()
    assert key.broker_key("k1") != key.broker_key("k2")
    assert key.broker_key("k1") == key.broker_key("k1")  # derived: any instance agrees
    assert key.broker_key("k1").kid.startswith(f"{key.kid}.")
    assert SigningKey.generate().broker_key("k1").secret != key.broker_key("k1").secret
