"""Checkpoints: a long call saves its progress, and gets it back when it runs again.

A task registered with ``checkpoint_s`` takes a :class:`TaskContext` as its first argument::

    @app.task(checkpoint_s=60)
    def render(ctx: TaskContext, frames: int) -> int:
        done = ctx.restored or 0            # None on a first run
        for frame in range(done, frames):
            draw(frame)
            ctx.checkpoint(frame + 1)       # saved when 60 s have passed since the last
        return frames

A state is ``bytes`` or any JSON value, at most :data:`MAX_CHECKPOINT_BYTES`. Saving does
not wait for the broker: the worker sends the newest state of each call as soon as the one
before it is stored (a state overtaken meanwhile is never sent).

Where they live: on the broker, in one durable queue per call that has saved,
``ns.<ns>.checkpoints.<digest of the call's id>``, which holds one message (the newer
drops the older from the head, so a checkpoint is replaced in one confirmed step) and is
bound to the namespace's exchange ``ns.<ns>.checkpoints``. A call that runs again, on any
PC, after its worker was evicted, killed or lost, reads it back (``basic.get``, then
requeued: it stays). When the call's result is confirmed the queue is deleted; an unused
one expires after 7 days. A namespace's replicas may keep checkpoints there and nobody
else's (:func:`bus.scopes.scopes_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic_core
from aio_pika.abc import AbstractRobustChannel
from pamqp.commands import Basic

from bus import names
from bus.connection import PUBLISH_FAILURES, Bus
from bus.sdk.protocol import Call
from bus.topology import checkpoint_spec

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "CheckpointError",
    "CheckpointStore",
    "Resume",
    "Saved",
    "Sink",
    "TaskContext",
    "with_context",
]

log = logging.getLogger(__name__)

#: The largest state a checkpoint holds (bigger ones belong in the namespace's data folder).
MAX_CHECKPOINT_BYTES = 8 * 1024 * 1024
#: What keeps a checkpoint from being stored or deleted: the broker gone or refusing.
_STORE_FAILURES: tuple[type[BaseException], ...] = (*PUBLISH_FAILURES, RuntimeError)
_BYTES = "application/octet-stream"
_JSON = "application/json"


class CheckpointError(Exception):
    """A checkpoint cannot be read back (corrupt, or of an unknown kind) or saved (too
    large, or not JSON). A task may catch it and start afresh; uncaught, its call fails
    with this message."""


@dataclass(frozen=True, slots=True)
class Saved:
    """A checkpoint as stored: its body and what it holds (bytes, or JSON)."""

    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class Resume:
    """What a checkpointing call starts from: its id, how often it saves, and the last
    state a run of it saved (None: it never saved)."""

    task_id: str
    checkpoint_s: float
    saved: Saved | None = None


#: Where a context sends a state to be stored: ``sink(task_id, saved)``; never blocks.
Sink = Callable[[str, Saved], None]


def encode_state(state: Any) -> Saved:
    """A state as stored.

    Raises:
        CheckpointError: it is neither bytes nor JSON, or larger than the bound.
    """
    if isinstance(state, bytes | bytearray | memoryview):
        saved = Saved(bytes(state), _BYTES)
    else:
        try:
            saved = Saved(pydantic_core.to_json(state), _JSON)
        except pydantic_core.PydanticSerializationError as error:
            raise CheckpointError(f"a checkpoint must be bytes or JSON: {error}") from None
    if len(saved.body) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"a checkpoint of {len(saved.body):,} bytes is over the {MAX_CHECKPOINT_BYTES:,} "
            "allowed; keep big state in the namespace's data folder and checkpoint its path"
        )
    return saved


def decode_state(saved: Saved) -> Any:
    """The state a checkpoint holds.

    Raises:
        CheckpointError: it is corrupt or of an unknown kind.
    """
    if saved.content_type == _BYTES:
        return saved.body
    if saved.content_type != _JSON:
        raise CheckpointError(f"a checkpoint of unknown kind {saved.content_type[:64]!r}")
    try:
        return pydantic_core.from_json(saved.body)
    except ValueError as error:
        raise CheckpointError(f"the checkpoint is corrupt: {error}") from None


class TaskContext:
    """A checkpointing call's view of its progress: what it restored, and how to save."""

    def __init__(
        self, resume: Resume, sink: Sink, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._resume = resume
        self._sink = sink
        self._clock = clock
        self._last_s = clock()
        #: Checkpoints this run saved.
        self.saves = 0

    @property
    def task_id(self) -> str:
        """The call's id."""
        return self._resume.task_id

    @property
    def restored(self) -> Any:
        """The state the call's last run saved: bytes or a JSON value; None if none did.

        Raises:
            CheckpointError: the checkpoint is corrupt (catch it to start afresh).
        """
        saved = self._resume.saved
        return None if saved is None else decode_state(saved)

    @property
    def due(self) -> bool:
        """Whether ``checkpoint_s`` has passed since the last save (or the start)."""
        return self._clock() - self._last_s >= self._resume.checkpoint_s

    def checkpoint(self, state: Any, *, force: bool = False) -> bool:
        """Save ``state`` if a checkpoint is due (or ``force``); whether it was saved.

        Raises:
            CheckpointError: the state is neither bytes nor JSON, or too large.
        """
        if not (force or self.due):
            return False
        self._sink(self.task_id, encode_state(state))
        self._last_s = self._clock()
        self.saves += 1
        return True


def with_context(call: Call, resume: Resume | None, sink: Sink) -> Call:
    """The call as its function takes it: with a :class:`TaskContext` first when the task
    checkpoints (``resume``), else as it is."""
    if resume is None:
        return call
    return Call(call.task_id, (TaskContext(resume, sink), *call.args), call.kwargs)


class CheckpointStore:
    """A worker's checkpoints on the broker, for one namespace; see the module header."""

    def __init__(
        self, bus: Bus, namespace: str, *, on_stored: Callable[[str], None] | None = None
    ) -> None:
        """Keep ``namespace``'s checkpoints; call ``on_stored(task_id)`` after each save."""
        self._bus = bus
        self.namespace = namespace
        self._on_stored = on_stored
        self._channel: AbstractRobustChannel | None = None
        self._declared: set[str] = set()
        self._latest: dict[str, Saved] = {}
        self._savers: dict[str, asyncio.Task[None]] = {}
        #: Checkpoints stored, and those the broker did not take (the older one stays).
        self.stored = 0
        self.failed = 0

    async def start(self) -> None:
        """Open the channel checkpoints are read and deleted on."""
        self._channel = await self._bus.channel()

    async def stop(self) -> None:
        """Finish the saves under way, then close the channel."""
        await asyncio.gather(*self._savers.values(), return_exceptions=True)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def _queue_of(self, task_id: str) -> Any:
        assert self._channel is not None, "CheckpointStore.start() was not called"
        queue = await checkpoint_spec(self.namespace, task_id).declare(self._channel)
        self._declared.add(task_id)
        return queue

    async def load(self, task_id: str) -> Saved | None:
        """The call's last checkpoint (once any save of it under way is stored), left in
        place; None if it has none."""
        saver = self._savers.get(task_id)
        if saver is not None:
            await asyncio.gather(saver, return_exceptions=True)
        queue = await self._queue_of(task_id)
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            return None
        await message.nack(requeue=True)
        return Saved(message.body, message.content_type or "")

    def save_soon(self, task_id: str, saved: Saved) -> None:
        """Store ``saved`` as the call's checkpoint once the one before it is stored (call
        on the event loop; a newer state replaces one not sent yet)."""
        self._latest[task_id] = saved
        if task_id not in self._savers:
            saver = asyncio.get_running_loop().create_task(self._save_latest(task_id))
            self._savers[task_id] = saver
            saver.add_done_callback(lambda _done: self._savers.pop(task_id, None))

    async def _save_latest(self, task_id: str) -> None:
        while (saved := self._latest.pop(task_id, None)) is not None:
            try:
                if task_id not in self._declared:
                    await self._queue_of(task_id)
                properties = Basic.Properties(content_type=saved.content_type, delivery_mode=2)
                route = names.Route(
                    names.ns_checkpoints_exchange(self.namespace), names.checkpoint_key(task_id)
                )
                await self._bus.publish_raw(route, saved.body, properties, timeout_s=30.0)
                self.stored += 1
                if self._on_stored is not None:
                    self._on_stored(task_id)
            except _STORE_FAILURES as error:
                self.failed += 1
                log.warning("checkpoint of %s not stored (%r); the one before stays", task_id,
                            error)  # fmt: skip

    async def drop(self, task_id: str) -> None:
        """Delete the call's checkpoint: its result is confirmed."""
        self._latest.pop(task_id, None)
        saver = self._savers.get(task_id)
        if saver is not None:
            await asyncio.gather(saver, return_exceptions=True)
        if task_id not in self._declared or self._channel is None:
            return
        self._declared.discard(task_id)
        with contextlib.suppress(*_STORE_FAILURES):  # it expires anyway
            await self._channel.queue_delete(names.checkpoint_queue(self.namespace, task_id))
