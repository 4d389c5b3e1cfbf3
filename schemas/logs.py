"""Replicas' output, as a PC's agent ships it to the platform.

An agent reads what each of its replicas prints, cuts it to its limits (a line rate and a
byte rate per replica, with a marker line where lines were dropped) and sends it in
batches through its own door. The platform keeps a batch only for a replica placed on
that PC, in the namespace's log stream (see ``bus.names.log_stream``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.base import AppId, Count, NamespaceName, NodeMessage, ReplicaId, Timestamp, WireModel

__all__ = ["MAX_LINE_CHARS", "LogBatch", "LogLine"]

#: A longer line is cut to this many characters (and ends with "…").
MAX_LINE_CHARS = 2048


class LogLine(WireModel):
    """One line a replica printed (``platform``: a line the agent wrote about it, such as
    how many lines were dropped), without its newline."""

    at: Timestamp
    stream: Literal["stdout", "stderr", "platform"] = "stdout"
    text: Annotated[str, StringConstraints(max_length=MAX_LINE_CHARS)]


class LogBatch(NodeMessage):
    """Lines one replica printed, in order; ``seq`` counts its batches from 0."""

    schema_name = "LogBatch"

    replica_id: ReplicaId
    namespace: NamespaceName
    app: AppId
    seq: Count
    lines: tuple[LogLine, ...] = Field(min_length=1, max_length=1000)
