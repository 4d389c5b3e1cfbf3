"""Encoding task calls and their outcomes as AMQP messages (pure: no I/O).

A task message goes to ``ns.<ns>.tasks`` with the app id as routing key. Its properties say
which task (header ``idlecloud-task``), its id (``message_id``) and where the result goes
(``reply_to``: the client's id, a routing key on ``ns.<ns>.results``). The body is one JSON
call, raw bytes, or a batch of JSON calls (see :mod:`schemas.tasks`). The result message
answers with ``correlation_id`` = the task (or batch) id.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pydantic_core
from pamqp.commands import Basic
from pydantic import ValidationError

from bus.codec import summarize_validation_error
from bus.errors import InvalidMessage
from schemas.tasks import BATCH_ADAPTER, CALL_ADAPTER, OUTCOMES_ADAPTER

__all__ = [
    "AGAIN_HEADER",
    "BATCH",
    "BYTES",
    "CPU_HEADER",
    "JSON",
    "MAX_CLAIMED_CPU_S",
    "MAX_TASK_BODY_BYTES",
    "NODE_HEADER",
    "STATUS_HEADER",
    "TASK_HEADER",
    "Call",
    "Outcome",
    "decode_calls",
    "decode_outcomes",
    "encode_batch",
    "encode_call",
    "encode_outcomes",
    "failure",
    "raised",
    "result_costs",
    "run_sync",
]

JSON = "application/json"
BYTES = "application/octet-stream"
BATCH = "application/vnd.idlecloud.batch+json"
TASK_HEADER = "idlecloud-task"
STATUS_HEADER = "idlecloud-status"
#: The PC a result was computed on (a job's history lists them).
NODE_HEADER = "idlecloud-node"
#: The CPU seconds a result message's calls took, and how many came again (redelivered).
CPU_HEADER = "idlecloud-cpu-s"
AGAIN_HEADER = "idlecloud-redelivered"
#: The most CPU seconds one result message may claim (a forged header counts no more).
MAX_CLAIMED_CPU_S = 1e6
#: Task bodies may carry data (image tiles), so they may be larger than control messages.
MAX_TASK_BODY_BYTES = 64 * 1024 * 1024
_PERSISTENT = 2


@dataclass(frozen=True, slots=True)
class Call:
    """One invocation of a task: JSON arguments, or raw bytes as the only argument."""

    task_id: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one call: a value, or an error with its traceback."""

    task_id: str
    ok: bool
    value: Any = None
    error: str = ""
    traceback: str = ""
    #: CPU seconds the call took where it ran (its result message's header carries the sum).
    cpu_s: float = 0.0
    #: It came to this worker again: the one that held it before went away unanswered.
    again: bool = False


def failure(call: Call, error: str, trace: str = "") -> Outcome:
    """The outcome of a call that failed with ``error``."""
    return Outcome(call.task_id, False, error=error, traceback=trace)


def raised(call: Call, error: BaseException) -> Outcome:
    """The outcome of a call that raised ``error`` (call from its ``except`` block)."""
    return failure(call, f"{type(error).__name__}: {error}", traceback.format_exc())


def run_sync(
    function: Callable[..., Any], call: Call, clock: Callable[[], float] = time.thread_time
) -> Outcome:
    """Run one call of a sync function here and now, timed by ``clock`` (this thread's
    CPU time; a pool's child, whose calls may start threads, times its whole process); an
    exception becomes its outcome."""
    started = clock()
    try:
        value = function(*call.args, **call.kwargs)
    except Exception as error:
        return replace(raised(call, error), cpu_s=clock() - started)
    return Outcome(call.task_id, True, value, cpu_s=clock() - started)


def _properties(
    content_type: str, message_id: str, headers: dict[str, Any], **more: Any
) -> Basic.Properties:
    return Basic.Properties(
        content_type=content_type,
        delivery_mode=_PERSISTENT,
        message_id=message_id,
        headers=headers,
        **more,
    )


def encode_call(task: str, call: Call, reply_to: str | None) -> tuple[bytes, Basic.Properties]:
    """A single call: raw bytes when its only argument is ``bytes``, else JSON.

    Raises:
        TypeError: an argument cannot be written as JSON.
    """
    if len(call.args) == 1 and not call.kwargs and isinstance(call.args[0], bytes | bytearray):
        body, content_type = bytes(call.args[0]), BYTES
    else:
        body, content_type = _to_json({"args": call.args, "kwargs": call.kwargs}), JSON
    return body, _properties(content_type, call.task_id, {TASK_HEADER: task}, reply_to=reply_to)


def encode_batch(
    task: str, batch_id: str, calls: Sequence[Call], reply_to: str | None
) -> tuple[bytes, Basic.Properties]:
    """Many JSON calls of one task in one message.

    Raises:
        TypeError: an argument is bytes or cannot be written as JSON.
    """
    items = [{"id": c.task_id, "args": c.args, "kwargs": c.kwargs} for c in calls]
    body = _to_json({"items": items})
    return body, _properties(BATCH, batch_id, {TASK_HEADER: task}, reply_to=reply_to)


def _to_json(document: object) -> bytes:
    try:
        return pydantic_core.to_json(document)
    except pydantic_core.PydanticSerializationError as error:
        raise TypeError(f"task arguments and results must be JSON (or bytes): {error}") from None


def decode_calls(body: bytes, content_type: str | None, message_id: str | None) -> list[Call]:
    """The calls a task message carries.

    Raises:
        InvalidMessage: the body is too large, of an unknown content type, or malformed.
    """
    if len(body) > MAX_TASK_BODY_BYTES:
        raise InvalidMessage(f"task body of {len(body)} bytes exceeds {MAX_TASK_BODY_BYTES}")
    if content_type == BATCH:
        try:
            items = BATCH_ADAPTER.validate_json(body)["items"]
        except ValidationError as error:
            raise InvalidMessage(
                f"invalid task batch: {summarize_validation_error(error)}"
            ) from None
        return [Call(i["id"], tuple(i.get("args", ())), i.get("kwargs", {})) for i in items]
    if not message_id:
        raise InvalidMessage("a task message needs a message_id (the task id)")
    if content_type == BYTES:
        return [Call(message_id, (body,))]
    if content_type == JSON:
        try:
            call = CALL_ADAPTER.validate_json(body)
        except ValidationError as error:
            raise InvalidMessage(
                f"invalid task call: {summarize_validation_error(error)}"
            ) from None
        return [Call(message_id, tuple(call.get("args", ())), call.get("kwargs", {}))]
    raise InvalidMessage(f"unknown task content type {str(content_type)[:64]!r}")


def encode_outcomes(
    outcomes: Sequence[Outcome], correlation_id: str, node: str | None = None
) -> tuple[bytes, Basic.Properties]:
    """The result message for ``outcomes``: raw bytes for one call that returned bytes.
    ``node``: the PC the worker runs on, when the platform said (``IDLECLOUD_NODE``).

    A value that cannot be written as JSON (bytes among several outcomes included) turns
    into a failure of its call saying so; this never raises.
    """
    status = "ok" if all(o.ok for o in outcomes) else "error"
    headers: dict[str, Any] = {STATUS_HEADER: status}
    if node:
        headers[NODE_HEADER] = node[:63]
    cpu_s, again = sum(o.cpu_s for o in outcomes), sum(o.again for o in outcomes)
    if cpu_s > 0:
        headers[CPU_HEADER] = f"{cpu_s:.6f}"
    if again:
        headers[AGAIN_HEADER] = again
    single = outcomes[0]
    if len(outcomes) == 1 and single.ok and isinstance(single.value, bytes | bytearray):
        return bytes(single.value), _properties(
            BYTES, correlation_id, headers, correlation_id=correlation_id
        )
    try:
        body = _outcomes_json(outcomes)
    except TypeError:
        body = _outcomes_json([_jsonable(outcome) for outcome in outcomes])
    return body, _properties(JSON, correlation_id, headers, correlation_id=correlation_id)


def _outcomes_json(outcomes: Sequence[Outcome]) -> bytes:
    documents = []
    for outcome in outcomes:
        document: dict[str, Any] = {"id": outcome.task_id, "ok": outcome.ok}
        if outcome.ok:
            if isinstance(outcome.value, bytes | bytearray):
                raise TypeError("bytes")
            document["value"] = outcome.value
        else:
            document["error"] = outcome.error[:4096]
            document["traceback"] = outcome.traceback[-16_384:]
        documents.append(document)
    return _to_json({"outcomes": documents})


def _jsonable(outcome: Outcome) -> Outcome:
    try:
        _outcomes_json([outcome])
    except TypeError as error:
        reason = (
            "bytes can be returned only by a single call, not in a batch"
            if isinstance(outcome.value, bytes | bytearray)
            else f"the task returned a value that is not JSON: {error}"
        )
        return Outcome(outcome.task_id, False, error=reason, cpu_s=outcome.cpu_s,
                       again=outcome.again)  # fmt: skip
    return outcome


def result_costs(headers: Mapping[str, Any] | None, outcomes: int) -> tuple[float, int]:
    """The CPU seconds and redelivered calls a result message's headers claim, bounded
    (at most :data:`MAX_CLAIMED_CPU_S`, and no more redelivered calls than it answers);
    what is missing or malformed counts 0."""
    headers = headers or {}
    cpu, again = headers.get(CPU_HEADER), headers.get(AGAIN_HEADER)
    try:
        cpu_s = float(cpu) if isinstance(cpu, str | int | float) else 0.0
    except ValueError:
        cpu_s = 0.0
    if not math.isfinite(cpu_s):
        cpu_s = 0.0
    redelivered = again if isinstance(again, int) and not isinstance(again, bool) else 0
    return min(max(cpu_s, 0.0), MAX_CLAIMED_CPU_S), min(max(redelivered, 0), outcomes)


def decode_outcomes(
    body: bytes, content_type: str | None, correlation_id: str | None
) -> list[Outcome]:
    """The outcomes a result message carries.

    Raises:
        InvalidMessage: the result is malformed.
    """
    if content_type == BYTES:
        if not correlation_id:
            raise InvalidMessage("a raw result needs a correlation_id (the task id)")
        return [Outcome(correlation_id, True, body)]
    try:
        outcomes = OUTCOMES_ADAPTER.validate_json(body)["outcomes"]
    except ValidationError as error:
        raise InvalidMessage(f"invalid task result: {summarize_validation_error(error)}") from None
    return [
        Outcome(o["id"], o["ok"], o.get("value"), o.get("error", ""), o.get("traceback", ""))
        for o in outcomes
    ]
