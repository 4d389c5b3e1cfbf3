"""The broker permissions of each role, as RabbitMQ OAuth 2 scopes, and a matcher for them.

A scope is ``<permission>:<vhost>/<name pattern>[/<routing-key pattern>]`` (the broker
prefixes it with its resource server id). ``*`` matches any characters; a scope with a
routing-key part also authorizes topic publishes (write) and bindings (read) on matching
keys. Because every name starts with its owner's prefix (:mod:`bus.names`), each role
needs only a handful of patterns:

- user ``alice``: everything named ``ns.alice.*``, and publishing ``ns.alice.*`` keys
  through her door, the exchange ``ns.alice`` (deploy, scale, delete, jobs, questions);
  reading what the platform keeps for her namespace, ``idlecloud.ns.alice.*`` (her jobs'
  results, their cancellations, her replicas' output).
- node ``edge``: everything named ``node.edge.*``, publishing ``node.edge.*`` keys
  through its door ``node.edge`` (heartbeat, presence, replica status, metrics), and
  binding its queue to ``node.edge.*`` commands.
- replica of ``alice``/``stereo``: reading its task queue and the namespace's cancelled
  jobs, publishing results to ``ns.alice.results`` and failed tasks to ``ns.alice.dead``,
  and keeping its calls' checkpoints (``ns.alice.checkpoints.*`` queues, through the
  exchange ``ns.alice.checkpoints``); nothing else.
- admin: every namespace's names and doors, its own ``idlecloud.admin.*`` names,
  ``idlecloud.admin.*`` keys through the admins' door ``idlecloud.admin``, and reading
  ``idlecloud.events`` and what the platform keeps for every namespace.

No role may write to a platform exchange (``idlecloud.*``) or the default exchange
(``amq.default``), so no route a role declares (a dead-letter exchange, an alternate
exchange, an exchange-to-exchange binding) can lead into one; no role may configure a
door (``<prefix>`` is outside ``<prefix>.*``), so its type and bindings stay the
platform's. The platform's own services are internal broker users and use no scopes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote

from bus import names
from schemas import Owner

__all__ = ["Permission", "RoleName", "Scope", "permits", "scopes_for", "wildcard_match"]

Permission = Literal["configure", "write", "read"]
RoleName = Literal["user", "node", "replica", "admin"]


@dataclass(frozen=True, slots=True)
class Scope:
    """One permission on names (and, optionally, routing keys) matching a pattern."""

    permission: Permission
    vhost: str
    name: str
    routing_key: str | None = None

    def __str__(self) -> str:
        text = f"{self.permission}:{quote(self.vhost, safe='')}/{self.name}"
        return text if self.routing_key is None else f"{text}/{self.routing_key}"

    def with_prefix(self, resource_server_id: str) -> str:
        """The scope as it appears in a token: ``<resource_server_id>.<scope>``."""
        return f"{resource_server_id}.{self}"


def wildcard_match(subject: str, pattern: str) -> bool:
    """Match as RabbitMQ's OAuth 2 backend does: ``*`` is any run of characters.

    The first part must match at the start; each later part is found left-most after the
    previous one; parts are URL-decoded.
    """
    first, *parts = (unquote(part) for part in pattern.split("*"))
    if not subject.startswith(first):
        return False
    position, length = len(first), len(subject)
    while True:
        if parts == [""]:
            return True
        if not parts:
            return position == length
        if position == length:
            return False
        part, *parts = parts
        if part:
            found = subject.find(part, position)
            if found < 0:
                return False
            position = found + len(part)


def _owner_scopes(vhost: str, owner: Owner) -> tuple[Scope, ...]:
    """Everything named for ``owner``, and its own routing keys through its door."""
    own = f"{owner.prefix}.*"
    return (
        Scope("configure", vhost, own),
        Scope("read", vhost, own, "*"),
        Scope("write", vhost, own, "*"),
        Scope("write", vhost, names.door(owner), own),
    )


def _view_scope(vhost: str, namespace: str) -> Scope:
    """Reading what the platform keeps for a namespace (its jobs' results and
    cancellations, its replicas' output): never writing, binding or deleting it."""
    return Scope("read", vhost, f"{names.ns_view_prefix(namespace)}.*")


def scopes_for(role: RoleName, subject: str, vhost: str, *, app: str = "") -> tuple[Scope, ...]:
    """The broker scopes of one credential.

    Args:
        role: ``user``, ``node``, ``replica`` or ``admin``.
        subject: the namespace (user, replica), the node name, or the admin's name.
        vhost: the platform's virtual host.
        app: the application a replica serves (replica role only).

    Raises:
        ValueError: for a replica without an app.
    """
    if role == "user":
        return (*_owner_scopes(vhost, Owner.namespace(subject)), _view_scope(vhost, subject))
    if role == "node":
        own = f"{Owner.node(subject).prefix}.*"
        return (
            *_owner_scopes(vhost, Owner.node(subject)),
            # bind its command queue to the commands addressed to it (and only those)
            Scope("read", vhost, names.COMMANDS_EXCHANGE, own),
        )
    if role == "replica":
        if not app:
            raise ValueError("a replica's scopes need the app it serves")
        checkpoints = names.ns_checkpoints_exchange(subject)
        return (
            Scope("read", vhost, names.task_queue(subject, app)),
            Scope("read", vhost, names.job_cancels_stream(subject)),
            Scope("write", vhost, names.ns_results_exchange(subject), "*"),
            Scope("write", vhost, names.ns_dead_exchange(subject), app),
            # its calls' checkpoints: declare, bind, read and delete their queues, and
            # publish to (and bind from) the exchange, which it may not configure
            Scope("configure", vhost, f"{checkpoints}.*"),
            Scope("read", vhost, f"{checkpoints}*"),
            Scope("write", vhost, f"{checkpoints}*"),
        )
    admin_own = f"{names.ADMIN_PREFIX}.*"
    return (
        Scope("configure", vhost, "ns.*.*"),  # every namespace's names, never a door
        Scope("read", vhost, "ns.*", "*"),
        Scope("write", vhost, "ns.*", "*"),  # every namespace's names and doors
        Scope("configure", vhost, admin_own),
        Scope("read", vhost, admin_own, "*"),
        Scope("write", vhost, admin_own, "*"),
        Scope("write", vhost, names.ADMIN_DOOR, admin_own),
        Scope("read", vhost, names.EVENTS_EXCHANGE, "*"),
        _view_scope(vhost, "*"),
    )


def permits(
    scopes: tuple[Scope, ...],
    permission: Permission,
    vhost: str,
    name: str,
    routing_key: str | None = None,
) -> bool:
    """Whether the broker would allow this access, given these scopes.

    Without ``routing_key`` this is the resource check (declare, consume, publish to an
    exchange); with it, the topic check the broker adds for topic exchanges.
    """
    return any(
        scope.permission == permission
        and wildcard_match(vhost, quote(scope.vhost, safe=""))
        and wildcard_match(name, scope.name)
        and (
            routing_key is None
            or (scope.routing_key is not None and wildcard_match(routing_key, scope.routing_key))
        )
        for scope in scopes
    )
