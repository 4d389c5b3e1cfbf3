"""The bodies of task and result messages between clients and workers.

Tasks are the hot path, so the envelope is small: the task's name, id and reply address
travel in AMQP properties, the body is the call. A JSON call is ``{"args": [...],
"kwargs": {...}}``; a raw call carries bytes (an image tile, say) as the body itself and the
function receives them as its only argument. A batch packs many JSON calls into one message
and its result packs their outcomes. Never pickle.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, JsonValue, StringConstraints

from schemas.base import WireModel

__all__ = ["BatchItem", "TaskBatch", "TaskCall", "TaskId", "TaskOutcome", "TaskOutcomes"]

TaskId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
MAX_BATCH = 10_000


class TaskCall(WireModel):
    """The arguments of one call."""

    args: tuple[JsonValue, ...] = ()
    kwargs: dict[str, JsonValue] = Field(default_factory=dict)


class BatchItem(TaskCall):
    """One call in a batch, with its own task id."""

    id: TaskId


class TaskBatch(WireModel):
    """Many calls of the same task in one message."""

    items: tuple[BatchItem, ...] = Field(min_length=1, max_length=MAX_BATCH)


class TaskOutcome(WireModel):
    """What one call returned, or how it failed."""

    id: TaskId
    ok: bool
    value: JsonValue = None
    error: Annotated[str, StringConstraints(max_length=4096)] = ""
    traceback: Annotated[str, StringConstraints(max_length=16_384)] = ""


class TaskOutcomes(WireModel):
    """The outcomes of one message's calls (one for a single call, many for a batch)."""

    outcomes: tuple[TaskOutcome, ...] = Field(min_length=1, max_length=MAX_BATCH)
