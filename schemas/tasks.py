"""The bodies of task and result messages between clients and workers.

Tasks are the hot path, so the envelope is small: the task's name, id and reply address
travel in AMQP properties, the body is the call. A JSON call is ``{"args": [...],
"kwargs": {...}}``; a raw call carries bytes (an image tile, say) as the body itself and the
function receives them as its only argument. A batch packs many JSON calls into one message
and its result packs their outcomes. Never pickle.

These bodies are TypedDicts validated by pydantic type adapters (strict, extra fields
forbidden) rather than models: they are decoded once per task, and skipping model
construction halves the cost of a 100-call batch (161 µs instead of 381 µs).
"""

from __future__ import annotations

from typing import Annotated, Any, NotRequired

from pydantic import ConfigDict, Field, StringConstraints, TypeAdapter
from typing_extensions import TypedDict

__all__ = [
    "BATCH_ADAPTER",
    "CALL_ADAPTER",
    "MAX_BATCH",
    "OUTCOMES_ADAPTER",
    "BatchItem",
    "TaskBatch",
    "TaskCall",
    "TaskId",
    "TaskOutcome",
    "TaskOutcomes",
]

TaskId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
MAX_BATCH = 10_000
_STRICT = ConfigDict(extra="forbid", strict=True)


class TaskCall(TypedDict):
    """The arguments of one call."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    args: NotRequired[list[Any]]
    kwargs: NotRequired[dict[str, Any]]


class BatchItem(TypedDict):
    """One call in a batch, with its own task id."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    id: TaskId
    args: NotRequired[list[Any]]
    kwargs: NotRequired[dict[str, Any]]


class TaskBatch(TypedDict):
    """Many calls of the same task in one message."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    items: Annotated[list[BatchItem], Field(min_length=1, max_length=MAX_BATCH)]


class TaskOutcome(TypedDict):
    """What one call returned, or how it failed."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    id: TaskId
    ok: bool
    value: NotRequired[Any]
    error: NotRequired[Annotated[str, StringConstraints(max_length=4096)]]
    traceback: NotRequired[Annotated[str, StringConstraints(max_length=16_384)]]


class TaskOutcomes(TypedDict):
    """The outcomes of one result message (one per call it answers)."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    outcomes: Annotated[list[TaskOutcome], Field(min_length=1, max_length=MAX_BATCH)]


CALL_ADAPTER = TypeAdapter(TaskCall)
BATCH_ADAPTER = TypeAdapter(TaskBatch)
OUTCOMES_ADAPTER = TypeAdapter(TaskOutcomes)
