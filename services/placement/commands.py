"""A tick's starts as the messages that carry them (pure).

Each start is a ``StartReplica`` with its own broker token. To a PC whose agent takes
``StartReplicas`` (its heartbeats say so), starts go together, up to
:data:`~schemas.STARTS_PER_MESSAGE_MAX` and :data:`START_BYTES_MAX` of estimated body a
message: the broker's cost is per message (a quorum queue's Raft entry, its delivery),
about 0.25 ms of its CPU each on this machine whatever the body's size up to a few KiB, so
five starts for one PC cost it one message's work instead of five. One start goes alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from schemas import STARTS_PER_MESSAGE_MAX, ReplicaStart, StartReplica, StartReplicas
from services.placement.reconciler import Start
from services.state import AppKey

__all__ = ["START_BYTES_MAX", "start_messages"]

#: The most body one StartReplicas may take, estimated (a body's limit is 1 MiB).
START_BYTES_MAX = 256 * 1024
_WORKLOAD = {"image", "command", "env", "ports"}
#: What a start's JSON holds besides its workload and token, at most (ids, names, sizes).
_START_OVERHEAD_BYTES = 512


def start_messages(
    starts: Iterable[tuple[Start, str]],
    epoch: int,
    batched: Callable[[str], bool],
) -> list[StartReplica | StartReplicas]:
    """The messages that carry ``starts`` (each with its token) to their PCs, in order.

    Args:
        starts: each start and its replica's broker token.
        epoch: the leader's epoch, which every command carries.
        batched: whether a PC's agent takes ``StartReplicas``.
    """
    workload_bytes: dict[AppKey, int] = {}
    by_node: defaultdict[str, list[tuple[dict[str, Any], int]]] = defaultdict(list)
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
        size = workload_bytes[key] + len(token) + _START_OVERHEAD_BYTES
        by_node[start.node].append((fields, size))
    messages: list[StartReplica | StartReplicas] = []
    for node, ones in by_node.items():
        for group in _groups(ones) if batched(node) else [[fields] for fields, _ in ones]:
            if len(group) == 1:
                messages.append(StartReplica(node=node, epoch=epoch, **group[0]))
            else:
                batch = tuple(ReplicaStart(**fields) for fields in group)
                messages.append(StartReplicas(node=node, epoch=epoch, starts=batch))
    return messages


def _groups(ones: list[tuple[dict[str, Any], int]]) -> list[list[dict[str, Any]]]:
    """Consecutive starts, as many to a group as the count and byte limits allow."""
    groups: list[list[dict[str, Any]]] = []
    size = 0
    for fields, one_bytes in ones:
        if (
            not groups
            or len(groups[-1]) == STARTS_PER_MESSAGE_MAX
            or size + one_bytes > (START_BYTES_MAX)
        ):
            groups.append([])
            size = 0
        groups[-1].append(fields)
        size += one_bytes
    return groups
