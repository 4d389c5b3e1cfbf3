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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
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
    "NO_KWARGS",
    "STATUS_HEADER",
    "TASK_HEADER",
    "WALL_HEADER",
    "Call",
    "Outcome",
    "decode_calls",
    "decode_outcomes",
    "encode_batch",
    "encode_call",
    "encode_outcomes",
    "failure",
    "is_raw",
    "is_raw_value",
    "raised",
    "result_costs",
    "result_wall_s",
    "run_all",
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
#: The wall-clock seconds a result message's calls ran (a map sizes its batches by them).
WALL_HEADER = "idlecloud-wall-s"
#: The most CPU seconds one result message may claim (a forged header counts no more).
MAX_CLAIMED_CPU_S = 1e6
#: Task bodies may carry data (image tiles), so they may be larger than control messages.
MAX_TASK_BODY_BYTES = 64 * 1024 * 1024
_PERSISTENT = 2


class _NoKwargs(Mapping[str, Any]):
    """No keyword arguments: an empty mapping made once, read-only (so hashable)."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return 0


#: The keyword arguments of every call without any (no dict made per call).
NO_KWARGS: Mapping[str, Any] = _NoKwargs()


# Call and Outcome are made per call on the hot path: not frozen (a frozen dataclass's
# __init__ costs 3.5 times a plain one's), and never changed once made.
@dataclass(slots=True)
class Call:
    """One invocation of a task: JSON arguments, or raw bytes as the only argument."""

    task_id: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = NO_KWARGS


@dataclass(slots=True)
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
    #: Wall-clock seconds the call ran (at the client: its result message's mean).
    wall_s: float = 0.0


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
    started, began = clock(), time.perf_counter()
    try:
        value = function(*call.args, **call.kwargs)
    except Exception as error:
        failed = raised(call, error)
        return replace(failed, cpu_s=clock() - started, wall_s=time.perf_counter() - began)
    return Outcome(
        call.task_id, True, value, cpu_s=clock() - started, wall_s=time.perf_counter() - began
    )


def run_all(function: Callable[..., Any], calls: Sequence[Call]) -> list[Outcome]:
    """Run a message's calls of a sync function here, one after another, timed together
    (this thread's CPU and the wall clock, shared equally: only their sums are reported)."""
    started, began = time.thread_time(), time.perf_counter()
    outcomes = []
    for call in calls:
        try:
            outcomes.append(Outcome(call.task_id, True, function(*call.args, **call.kwargs)))
        except Exception as error:
            outcomes.append(raised(call, error))
    cpu_s = (time.thread_time() - started) / len(calls)
    wall_s = (time.perf_counter() - began) / len(calls)
    for outcome in outcomes:
        outcome.cpu_s, outcome.wall_s = cpu_s, wall_s
    return outcomes


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


def is_raw(call: Call) -> bool:
    """Its only argument is bytes: it travels as the message body, in a message of its own."""
    return len(call.args) == 1 and not call.kwargs and isinstance(call.args[0], bytes | bytearray)


def is_raw_value(outcome: Outcome) -> bool:
    """It returned bytes: they travel as the body of a result message of its own."""
    return outcome.ok and isinstance(outcome.value, bytes | bytearray)


def encode_call(task: str, call: Call, reply_to: str | None) -> tuple[bytes, Basic.Properties]:
    """A single call: raw bytes when its only argument is ``bytes``, else JSON.

    Raises:
        TypeError: an argument cannot be written as JSON.
    """
    if is_raw(call):
        body, content_type = bytes(call.args[0]), BYTES
    else:
        body, content_type = _to_json(_call_document(call)), JSON
    return body, _properties(content_type, call.task_id, {TASK_HEADER: task}, reply_to=reply_to)


def encode_batch(
    task: str, batch_id: str, calls: Sequence[Call], reply_to: str | None
) -> tuple[bytes, Basic.Properties]:
    """Many JSON calls of one task in one message.

    Raises:
        TypeError: an argument is bytes or cannot be written as JSON.
    """
    body = _to_json({"items": [_call_document(call, with_id=True) for call in calls]})
    return body, _properties(BATCH, batch_id, {TASK_HEADER: task}, reply_to=reply_to)


def _call_document(call: Call, with_id: bool = False) -> dict[str, Any]:
    """A call as JSON: its id (in a batch), arguments, and keyword arguments if any."""
    document: dict[str, Any] = {"id": call.task_id} if with_id else {}
    document["args"] = call.args
    if call.kwargs:
        document["kwargs"] = call.kwargs
    return document


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
        return [Call(i["id"], tuple(i.get("args", ())), i.get("kwargs") or NO_KWARGS)
                for i in items]  # fmt: skip
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
        return [Call(message_id, tuple(call.get("args", ())), call.get("kwargs") or NO_KWARGS)]
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
    wall_s = sum(o.wall_s for o in outcomes)
    if wall_s > 0:
        headers[WALL_HEADER] = f"{wall_s:.6f}"
    if again:
        headers[AGAIN_HEADER] = again
    single = outcomes[0]
    if len(outcomes) == 1 and is_raw_value(single):
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
        return replace(outcome, ok=False, value=None, error=reason)
    return outcome


def result_costs(headers: Mapping[str, Any] | None, outcomes: int) -> tuple[float, int]:
    """The CPU seconds and redelivered calls a result message's headers claim, bounded
    (at most :data:`MAX_CLAIMED_CPU_S`, and no more redelivered calls than it answers);
    what is missing or malformed counts 0."""
    headers = headers or {}
    again = headers.get(AGAIN_HEADER)
    redelivered = again if isinstance(again, int) and not isinstance(again, bool) else 0
    return _claimed_s(headers, CPU_HEADER), min(max(redelivered, 0), outcomes)


def result_wall_s(headers: Mapping[str, Any] | None, outcomes: int) -> float:
    """The wall-clock seconds each of a result message's ``outcomes`` calls ran, on
    average, as its headers claim (bounded as :func:`result_costs` bounds CPU)."""
    return _claimed_s(headers or {}, WALL_HEADER) / max(outcomes, 1)


def _claimed_s(headers: Mapping[str, Any], name: str) -> float:
    """Header ``name`` as seconds in [0, MAX_CLAIMED_CPU_S]; missing or malformed: 0."""
    claimed = headers.get(name)
    try:
        seconds = float(claimed) if isinstance(claimed, str | int | float) else 0.0
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), MAX_CLAIMED_CPU_S) if math.isfinite(seconds) else 0.0


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
