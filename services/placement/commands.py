"""A tick's starts and stops as the messages that carry them (pure).

Each start is a ``StartReplica`` with its own broker token, each stop a ``StopReplica``.
To a PC whose agent takes several commands in one message (its heartbeats say so), a
tick's starts go together in ``StartReplicas`` (up to :data:`~schemas.
STARTS_PER_MESSAGE_MAX`) and its stops in ``StopReplicas``, each message at most
:data:`BATCH_BYTES_MAX` of estimated body: the broker's cost is per message (a quorum
queue's Raft entry, its delivery), 0.29-0.35 ms of its CPU for a 6 KB command here
(``bench/broker_costs.py``), so five starts for one PC cost it one message's work
instead of five. One command goes alone, as before.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from schemas import (
    STARTS_PER_MESSAGE_MAX,
    ReplicaStart,
    ReplicaStop,
    StartReplica,
    StartReplicas,
    StopReplica,
    StopReplicas,
)
from schemas.node import MAX_REPLICAS_PER_NODE
from services.placement.reconciler import Start, Stop
from services.state import AppKey

__all__ = ["BATCH_BYTES_MAX", "start_messages", "stop_messages"]

#: The most body one StartReplicas or StopReplicas may take, estimated (the limit: 1 MiB).
BATCH_BYTES_MAX = 256 * 1024
_WORKLOAD = {"image", "command", "env", "ports"}
#: What a command's JSON holds besides its workload, token and reason, at most.
_OVERHEAD_BYTES = 512

#: A command's fields, and the bytes its JSON takes at most, by PC.
_Packing = defaultdict[str, list[tuple[dict[str, Any], int]]]
M = TypeVar("M")


def start_messages(
    starts: Iterable[tuple[Start, str]],
    epoch: int,
    batched: Callable[[str], bool],
) -> list[StartReplica | StartReplicas]:
    """The messages that carry ``starts`` (each with its token) to their PCs.

    Args:
        starts: each start and its replica's broker token.
        epoch: the leader's epoch, which every command carries.
        batched: whether a PC's agent takes several commands in one message.
    """
    workload_bytes: dict[AppKey, int] = {}
    by_node: _Packing = defaultdict(list)
    for start, token in starts:
        request = start.spec.request
        key = start.spec.key
        if key not in workload_bytes:
            workload_bytes[key] = len(request.model_dump_json(include=_WORKLOAD))
        fields = {
            "replica_id": start.replica_id, "namespace": request.namespace, "app": request.app,
            "image": request.image, "command": request.command, "env": request.env,
            "ports": request.ports, "reservation": start.spec.reservation.wire(), "token": token,
        }  # fmt: skip
        by_node[start.node].append((fields, workload_bytes[key] + len(token) + _OVERHEAD_BYTES))
    return _pack(
        by_node, batched, STARTS_PER_MESSAGE_MAX,
        lambda node, one: StartReplica(node=node, epoch=epoch, **one),
        lambda node, many: StartReplicas(node=node, epoch=epoch,
                                         starts=tuple(ReplicaStart(**one) for one in many)),
    )  # fmt: skip


def stop_messages(
    stops: Iterable[Stop], epoch: int, batched: Callable[[str], bool]
) -> list[StopReplica | StopReplicas]:
    """The messages that carry ``stops`` to their PCs.

    Args:
        stops: the tick's stops.
        epoch: the leader's epoch, which every command carries.
        batched: whether a PC's agent takes several commands in one message.
    """
    by_node: _Packing = defaultdict(list)
    for stop in stops:
        fields = {"replica_id": stop.replica_id, "grace_s": stop.grace_s, "reason": stop.reason}
        by_node[stop.node].append((fields, len(stop.reason) + _OVERHEAD_BYTES))
    return _pack(
        by_node, batched, MAX_REPLICAS_PER_NODE,
        lambda node, one: StopReplica(node=node, epoch=epoch, **one),
        lambda node, many: StopReplicas(node=node, epoch=epoch,
                                        stops=tuple(ReplicaStop(**one) for one in many)),
    )  # fmt: skip


def _pack(
    by_node: _Packing,
    batched: Callable[[str], bool],
    most: int,
    alone: Callable[[str, dict[str, Any]], M],
    together: Callable[[str, list[dict[str, Any]]], M],
) -> list[M]:
    """Each PC's commands: one a message, or, to a PC that takes it, as many to a message
    as ``most`` and :data:`BATCH_BYTES_MAX` allow (one left over still goes alone)."""
    messages: list[M] = []
    for node, ones in by_node.items():
        groups = _groups(ones, most) if batched(node) else [[fields] for fields, _ in ones]
        for group in groups:
            messages.append(alone(node, group[0]) if len(group) == 1 else together(node, group))
    return messages


def _groups(ones: list[tuple[dict[str, Any], int]], most: int) -> list[list[dict[str, Any]]]:
    """Consecutive commands, as many to a group as ``most`` and the byte limit allow."""
    groups: list[list[dict[str, Any]]] = []
    size = 0
    for fields, one_bytes in ones:
        if not groups or len(groups[-1]) == most or size + one_bytes > BATCH_BYTES_MAX:
            groups.append([])
            size = 0
        groups[-1].append(fields)
        size += one_bytes
    return groups
