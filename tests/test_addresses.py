"""A broker's addresses: one URL or a cluster's nodes (pure: :mod:`bus.addresses`)."""

from __future__ import annotations

import pytest
from yarl import URL

from bus import addresses
from bus.connection import broker_user_name

FULL = "amqp://alice:s3cret@b1:5672/%2F,amqp://alice:s3cret@b2:5673/%2F"


def test_one_url_is_one_node() -> None:
    assert addresses.nodes("amqp://guest:guest@127.0.0.1:5672/%2F") == (
        URL("amqp://guest:guest@127.0.0.1:5672/%2F"),
    )


def test_later_nodes_may_be_host_and_port_and_share_the_first_ones_credentials() -> None:
    nodes = addresses.nodes("amqps://key:tok@b1:5671/site?cafile=/ca.pem, b2:5681,b3")
    assert [(n.host, n.port) for n in nodes] == [("b1", 5671), ("b2", 5681), ("b3", 5671)]
    assert {(n.user, n.password, n.path, n.query_string) for n in nodes} == {
        ("key", "tok", "/site", "cafile=/ca.pem")
    }


def test_each_rewrites_every_node_and_the_user_name_is_the_first_ones() -> None:
    swapped = addresses.each(FULL, lambda node: node.with_user("k1").with_password("jwt"))
    assert [(n.user, n.password) for n in addresses.nodes(swapped)] == [("k1", "jwt")] * 2
    assert broker_user_name(FULL) == "alice"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("b1:5672", "not a URL"),
        ("amqp://a:b@b1/%2F,,b2", "empty broker address"),
        ("amqp://a:b@b1/%2F,amqp://a:b@b2/other", "another virtual host or user"),
        ("amqp://a:b@b1/%2F,amqp://eve:b@b2/%2F", "another virtual host or user"),
    ],
)
def test_a_bad_list_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        addresses.nodes(text)


def test_redacted_hides_every_nodes_credentials() -> None:
    assert addresses.redacted(FULL) == "amqp://***@b1:5672/%2F,amqp://***@b2:5673/%2F"
