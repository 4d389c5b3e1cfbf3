"""Ownership of names, and the broker scopes of each role (pure: no broker involved).

The live matrix against a broker configured with the OAuth 2 backend belongs to the auth
service's tests; here the scopes are checked with the same wildcard semantics the broker's
OAuth 2 backend uses (``bus.scopes.wildcard_match``).
"""

from __future__ import annotations

import pytest

from bus import names
from bus.scopes import Permission, RoleName, Scope, permits, scopes_for, wildcard_match
from schemas import MESSAGES, Message, Owner

from .examples import EXAMPLES

VHOST = "/"
PERMISSIONS: tuple[Permission, ...] = ("configure", "write", "read")

# Credentials that exist side by side: two users, two PCs, a replica of each user, an admin.
CREDENTIALS: dict[str, tuple[RoleName, str, str]] = {
    "user alice": ("user", "alice", ""),
    "user bob": ("user", "bob", ""),
    "node edge": ("node", "edge", ""),
    "node ninja": ("node", "ninja", ""),
    "replica alice/stereo": ("replica", "alice", "stereo"),
    "replica bob/stereo": ("replica", "bob", "stereo"),
    "admin root": ("admin", "root", ""),
}


def _scopes(credential: str) -> tuple[Scope, ...]:
    role, subject, app = CREDENTIALS[credential]
    return scopes_for(role, subject, VHOST, app=app)


ALICE = frozenset({"user alice", "admin root"})
ALICE_AND_REPLICA = ALICE | {"replica alice/stereo"}
EDGE = frozenset({"node edge"})

# Each name with a use of it, and exactly the credentials that may make that use. Admins
# act for every namespace; a replica acts for its own namespace's app only.
OWNED: list[tuple[str, Permission, str | None, frozenset[str]]] = [
    (names.task_queue("alice", "stereo"), "configure", None, ALICE),
    (names.task_queue("alice", "stereo"), "read", None, ALICE_AND_REPLICA),
    (names.task_queue("alice", "other"), "read", None, ALICE),
    (names.reply_queue(Owner.namespace("alice"), "k1"), "configure", None, ALICE),
    (names.ns_events_exchange("alice"), "read", "#", ALICE),
    (names.ns_results_exchange("alice"), "write", "client-1", ALICE_AND_REPLICA),
    (names.ns_tasks_exchange("alice"), "write", None, ALICE),
    (names.ns_dead_exchange("alice"), "write", "stereo", ALICE_AND_REPLICA),
    (names.ns_dead_exchange("alice"), "write", "other", ALICE),
    (names.task_dead_queue("alice", "stereo"), "read", None, ALICE),
    (names.result_queue("alice", "client-1"), "read", None, ALICE),
    (names.door(Owner.namespace("alice")), "write", "ns.alice.deploy.stereo", ALICE),
    (names.door(Owner.namespace("alice")), "write", "ns.alice.delete.stereo", ALICE),
    (names.node_commands_queue("edge"), "read", None, EDGE),
    (names.door(Owner.node("edge")), "write", "node.edge.heartbeat", EDGE),
    (names.door(Owner.node("edge")), "write", "node.edge.presence", EDGE),
    (names.ADMIN_DOOR, "write", "idlecloud.admin.quota.alice", frozenset({"admin root"})),
    (names.reply_queue(Owner.node("edge"), "k2"), "configure", None, EDGE),
]


@pytest.mark.parametrize(("name", "permission", "key", "allowed"), OWNED)
def test_each_name_is_usable_by_its_owner_and_nobody_else(
    name: str, permission: Permission, key: str | None, allowed: frozenset[str]
) -> None:
    for credential in CREDENTIALS:
        may = permits(_scopes(credential), permission, VHOST, name, key)
        assert may == (credential in allowed), (credential, permission, name, key)


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_no_role_may_write_to_the_default_exchange(credential: str) -> None:
    scopes = _scopes(credential)
    assert not permits(scopes, "write", VHOST, names.DEFAULT_EXCHANGE_RESOURCE)
    assert not permits(scopes, "write", VHOST, names.DEFAULT_EXCHANGE_RESOURCE, "ns.bob.tasks.x")


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_no_role_may_write_to_a_platform_exchange_or_configure_a_door(credential: str) -> None:
    """Writing is what a dead-letter exchange, an alternate exchange or an
    exchange-to-exchange binding needs of its target; configuring a door would let its
    owner make it a fanout and its binding keys mean nothing."""
    scopes = _scopes(credential)
    for exchange in names.PLATFORM_EXCHANGES:
        assert not permits(scopes, "write", VHOST, exchange), (credential, exchange)
    doors = (Owner.namespace("alice"), Owner.namespace("bob"), Owner.node("edge"),
             Owner.platform())  # fmt: skip
    for owner in doors:
        assert not permits(scopes, "configure", VHOST, names.door(owner)), (credential, owner)


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_no_role_may_configure_or_read_platform_internals(credential: str) -> None:
    scopes = _scopes(credential)
    for platform_name in (names.JOURNAL_STREAM, names.DEAD_LETTER_QUEUE, names.leader_queue("x")):
        for permission in PERMISSIONS:
            assert not permits(scopes, permission, VHOST, platform_name), (
                credential,
                platform_name,
            )
    # Commands to PCs come from the placement leader only; only the PC itself may hear them.
    assert not permits(scopes, "write", VHOST, names.COMMANDS_EXCHANGE, "node.edge.start")
    may_hear = permits(scopes, "read", VHOST, names.COMMANDS_EXCHANGE, "node.edge.start")
    assert may_hear == (credential in EDGE), credential


def test_a_replica_reads_its_own_task_queue_and_publishes_results_only() -> None:
    scopes = _scopes("replica alice/stereo")
    assert permits(scopes, "read", VHOST, names.task_queue("alice", "stereo"))
    assert not permits(scopes, "read", VHOST, names.task_queue("alice", "other"))
    assert not permits(scopes, "configure", VHOST, names.task_queue("alice", "stereo"))
    assert permits(scopes, "write", VHOST, names.ns_results_exchange("alice"), "client-1")
    assert not permits(scopes, "write", VHOST, names.ns_results_exchange("bob"), "client-1")
    assert not permits(scopes, "write", VHOST, names.COMMANDS_EXCHANGE, "ns.alice.deploy.x")


def test_scopes_are_bound_to_the_vhost() -> None:
    assert not permits(_scopes("user alice"), "read", "other", names.task_queue("alice", "x"))
    assert str(_scopes("user alice")[0]) == "configure:%2F/ns.alice.*"
    assert _scopes("user alice")[0].with_prefix("idlecloud") == "idlecloud.configure:%2F/ns.alice.*"


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.schema_name)
def test_every_message_travels_under_its_owners_prefix(cls: type[Message]) -> None:
    message = EXAMPLES[cls]
    route = names.route(message)
    if route.exchange == names.DEFAULT_EXCHANGE:  # the control plane's journal entries
        assert route.routing_key == names.JOURNAL_STREAM
    elif route.exchange == names.door(message.owner()):  # named exactly its owner's prefix
        assert route.routing_key.startswith(f"{route.exchange}.")
    else:
        assert route.exchange in names.PLATFORM_EXCHANGES
    assert names.owner_of(route.routing_key) == message.owner()


def test_a_user_may_publish_her_requests_and_no_one_elses() -> None:
    alice = _scopes("user alice")
    for cls in MESSAGES:
        route = names.route(EXAMPLES[cls])
        may = permits(alice, "write", VHOST, route.exchange, route.routing_key)
        owned_by_alice = EXAMPLES[cls].owner() == Owner.namespace("alice")
        may_send = owned_by_alice and route.exchange == names.door(Owner.namespace("alice"))
        assert may == may_send, cls


@pytest.mark.parametrize(
    ("subject", "pattern", "expected"),
    [
        ("ns.alice.tasks.x", "ns.alice.*", True),
        ("ns.alice-2.tasks.x", "ns.alice.*", False),
        ("ns.alice", "ns.alice.*", False),
        ("amq.default", "ns.*", False),
        ("exact", "exact", True),
        ("exactly", "exact", False),
        ("a.b.c", "a.*.c", True),
        ("a.b.c.d", "a.*.c", False),
        ("/", "%2F", True),
        ("anything", "*", True),
    ],
)
def test_wildcards_match_as_the_broker_does(subject: str, pattern: str, expected: bool) -> None:
    assert wildcard_match(subject, pattern) is expected


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("ns.alice.tasks.stereo", Owner.namespace("alice")),
        ("node.edge.heartbeat", Owner.node("edge")),
        ("idlecloud.events", Owner.platform()),
        ("ns.alice", None),
        ("amq.default", None),
        ("", None),
    ],
)
def test_owner_of_parses_names(name: str, owner: Owner | None) -> None:
    assert names.owner_of(name) == owner
