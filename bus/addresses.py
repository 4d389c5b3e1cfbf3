"""A broker's addresses: one URL, or every node of a cluster in one comma-separated string.

Every client (agents, workers, the SDK, the services, the gateway, the ``bus`` command)
takes its broker as ``IDLECLOUD_URL`` or ``--url``. For a cluster that is a list:
``amqp://user:pass@node1:5672/vh,amqp://user:pass@node2:5672/vh``, or the shorthand
``amqp://user:pass@node1:5672/vh,node2:5672,node3`` where a later node is only
``host[:port]`` and shares the first's scheme, credentials, virtual host and options (and
port, if it names none).
A connection goes to one node at a time and moves to the next when it is lost
(:class:`bus.connection.Bus`). A password holding a comma must be written ``%2C``.

Whatever changes a URL (credentials for a broker token, say) changes every node's
through :func:`each`, so the list stays a list.
"""

from __future__ import annotations

from collections.abc import Callable

from yarl import URL

__all__ = ["each", "first", "nodes", "redacted"]


def nodes(urls: str) -> tuple[URL, ...]:
    """The URL of each node in ``urls``, in order.

    Raises:
        ValueError: an entry is empty, or names another virtual host or user than the first
            (all nodes of one site serve the same ones).
    """
    entries = [entry.strip() for entry in urls.split(",")]
    if not entries[0] or "://" not in entries[0]:
        raise ValueError(
            f"the broker address {redacted(entries[0])!r} is not a URL: give "
            "amqp://user:password@host:port/vhost (several nodes separated by commas)"
        )
    head = URL(entries[0])
    found = [head]
    for entry in entries[1:]:
        if not entry:
            raise ValueError("an empty broker address in the list: remove the extra comma")
        if "://" not in entry:
            host, _, port = entry.partition(":")
            node = head.with_host(host).with_port(int(port) if port.isdigit() else head.port)
        else:
            node = URL(entry)
        if node.path != head.path or node.user != head.user:
            raise ValueError(
                f"broker node {node.host}:{node.port} names another virtual host or user than "
                f"{head.host}:{head.port}; every node of a cluster serves the same ones"
            )
        found.append(node)
    return tuple(found)


def first(urls: str) -> URL:
    """The first node's URL (its credentials and virtual host are every node's)."""
    return nodes(urls)[0]


def each(urls: str, change: Callable[[URL], URL]) -> str:
    """``urls`` with ``change`` applied to every node's URL (each written out whole)."""
    return ",".join(str(change(node)) for node in nodes(urls))


def redacted(urls: str) -> str:
    """``urls`` with every node's credentials hidden, for messages and logs."""
    hidden = []
    for url in urls.split(","):
        head, at, tail = url.rpartition("@")
        hidden.append(f"{head.partition('://')[0]}://***@{tail}" if at else url)
    return ",".join(hidden)
