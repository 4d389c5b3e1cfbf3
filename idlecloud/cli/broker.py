"""`bus broker grow`: give replicated queues and streams their copies on every node they lack.

A quorum queue gets its members, and a stream its replicas, when it is declared: among
the nodes running then, at most :data:`REPLICAS`. Whatever was declared before a
cluster formed, or while a node was down, keeps fewer copies for good; RabbitMQ does not
add them by itself. :func:`grow_plan` (pure) says which copies to add, spreading them
over the nodes that hold the fewest; the command adds them with ``rabbitmq-queues
add_member`` and ``rabbitmq-streams add_replica``, run where the Erlang cookie lets them
reach the broker (as the auth service's ``rabbitmqctl`` is).
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated

import typer

from idlecloud.cli._common import JsonOption, console, fail, print_json
from idlecloud.cli.auth import broker_app
from services.auth.keyring import erlang_binary

__all__ = ["REPLICAS", "Growth", "Replicated", "grow_plan", "register"]

#: How many copies a quorum queue or stream keeps on a cluster: RabbitMQ's default
#: (``quorum_cluster_size``), the fewest that outlive one node; on fewer nodes, one each.
REPLICAS = 3


@dataclass(frozen=True, slots=True)
class Replicated:
    """A quorum queue or stream and the nodes that hold a copy of it."""

    vhost: str
    name: str
    kind: str  # "quorum" or "stream"
    members: frozenset[str]


@dataclass(frozen=True, slots=True)
class Growth:
    """Add a copy of a queue or stream on a node."""

    vhost: str
    name: str
    kind: str
    node: str


def grow_plan(
    queues: Iterable[Replicated], nodes: Sequence[str], replicas: int = REPLICAS
) -> list[Growth]:
    """The copies to add so that each queue has ``min(replicas, len(nodes))``, each on the
    running node that holds the fewest copies so far (ties: the order of ``nodes``)."""
    wanted = min(replicas, len(nodes))
    queues = sorted(queues, key=lambda queue: (queue.vhost, queue.name))
    load = Counter({node: 0 for node in nodes})
    for queue in queues:
        load.update(member for member in queue.members if member in load)
    plan = []
    for queue in queues:
        held = {member for member in queue.members if member in load}
        while len(held) < wanted:
            node = min((n for n in nodes if n not in held), key=lambda n: load[n])
            plan.append(Growth(queue.vhost, queue.name, queue.kind, node))
            held.add(node)
            load[node] += 1
    return plan


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        fail(f"`{' '.join(command)}` failed: {error}; run this on a broker host, as root")
    if done.returncode != 0:
        fail(f"`{' '.join(command)}` failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode()


def _replicated(node: list[str]) -> tuple[list[str], list[Replicated]]:
    status = json.loads(_run(["rabbitmqctl", *node, "cluster_status", "--formatter", "json"]))
    vhosts = json.loads(_run(["rabbitmqctl", *node, "list_vhosts", "--formatter", "json"]))
    found = []
    for vhost in (row["name"] for row in vhosts):
        listed = json.loads(_run(["rabbitmqctl", *node, "list_queues", "-p", vhost, "name",
                                  "type", "members", "--formatter", "json"]))  # fmt: skip
        found += [
            Replicated(vhost, row["name"], row["type"], frozenset(row.get("members") or ()))
            for row in listed
            if row.get("type") in ("quorum", "stream")
        ]
    return sorted(status.get("running_nodes", [])), found


def _add_copy(growth: Growth, target: list[str]) -> list[str]:
    """The command that adds ``growth``'s copy (Debian ships no ``rabbitmq-streams`` in
    the PATH, so a stream's replica is added through ``rabbitmqctl eval``)."""
    if growth.kind == "quorum":
        return ["rabbitmq-queues", *target, "add_member", "-p", growth.vhost, growth.name,
                growth.node]  # fmt: skip
    vhost, name, node = (erlang_binary(text) for text in (growth.vhost, growth.name, growth.node))
    expression = f"ok = rabbit_stream_queue:add_replica({vhost}, {name}, binary_to_atom({node}))."
    return ["rabbitmqctl", *target, "eval", expression]


def broker_grow(
    node: Annotated[
        str | None,
        typer.Option(
            help="The broker node to ask (as rabbitmqctl -n takes it); default: this host's."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only say what would be added.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Add the copies that quorum queues and streams lack on the running nodes (those
    declared before the cluster formed, or while a node was down), up to 3 each."""
    target = ["-n", node] if node else []
    nodes, queues = _replicated(target)
    plan = grow_plan(queues, nodes)
    if not dry_run:
        for growth in plan:
            _run(_add_copy(growth, target))
    if as_json:
        print_json([{"vhost": g.vhost, "name": g.name, "kind": g.kind, "node": g.node}
                    for g in plan])  # fmt: skip
        return
    done = "would add" if dry_run else "added"
    for growth in plan:
        console.print(f"{done} a copy of {growth.vhost}/{growth.name} on {growth.node}")
    console.print(f"{len(plan)} copies {'to add' if dry_run else 'added'} "
                  f"({len(nodes)} running nodes)")  # fmt: skip


def register(_app: typer.Typer) -> None:
    """Add ``grow`` to `bus broker` (whose ``config`` is in :mod:`idlecloud.cli.auth`)."""
    broker_app.command("grow")(broker_grow)
