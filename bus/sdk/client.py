"""Submitting tasks and collecting their results, exactly one per task.

A client owns a result queue (``ns.<ns>.results.<client id>``) bound to its namespace's
results exchange. Every task it submits carries a task id; the first result for an id
completes it and any later one (the task ran twice because its first worker died after
answering) is counted and dropped. All state stays with the client, as in the thesis.

Throughput comes from keeping many publishes in flight: a quorum queue's confirm costs about
a millisecond, so :meth:`TaskClient.map` publishes up to ``window`` messages at once and
packs ``batch_size`` calls per message when asked.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import uuid
from collections.abc import AsyncIterator, Iterable, Sized
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel
from rich.progress import Progress

from bus import names
from bus.connection import Bus
from bus.consumer import settle
from bus.errors import BusError, InvalidMessage
from bus.sdk.app import App, Task
from bus.sdk.protocol import Call, Outcome, decode_outcomes, encode_batch, encode_call
from bus.topology import QueueSpec, declare_app

__all__ = ["TaskClient", "TaskFailed"]

#: An idle client's result queue is deleted by the broker after this long.
RESULT_QUEUE_EXPIRES_MS = 10 * 60 * 1000


class TaskFailed(BusError):
    """A task failed on every attempt; ``error`` and ``traceback`` say how."""

    def __init__(self, task_id: str, error: str, traceback: str) -> None:
        super().__init__(f"task {task_id} failed: {error}")
        self.task_id = task_id
        self.error = error
        self.traceback = traceback


def _as_call_arguments(item: Any) -> tuple[Any, ...]:
    return item if isinstance(item, tuple) else (item,)


class _MapState:
    """Calls a map submitted, and their futures in the order they complete."""

    def __init__(self) -> None:
        self.submitted = 0
        self.received = 0
        self._completed: asyncio.Queue[tuple[int, asyncio.Future[Any]]] = asyncio.Queue()

    def track(self, index: int, future: asyncio.Future[Any]) -> None:
        self.submitted += 1
        future.add_done_callback(lambda done: self._completed.put_nowait((index, done)))

    async def next_completed(
        self, publishing: asyncio.Task[None]
    ) -> tuple[int, asyncio.Future[Any]]:
        """The next completed call; raises what publishing raised, if it failed first."""
        if self._completed.empty() and not publishing.done():
            getter = asyncio.ensure_future(self._completed.get())
            await asyncio.wait({getter, publishing}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                self.received += 1
                return getter.result()
            getter.cancel()
            publishing.result()
        item = await self._completed.get()
        self.received += 1
        return item


class TaskClient:
    """Submits an app's tasks and awaits their results."""

    def __init__(self, bus: Bus, app: App) -> None:
        self._bus = bus
        self.app = app
        self.client_id = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._channel: AbstractRobustChannel | None = None
        self.duplicates = 0

    async def start(self) -> TaskClient:
        """Declare the app's queues (so no task is dropped before a worker exists) and ours."""
        self._channel = await self._bus.channel(prefetch=1000)
        await declare_app(self._channel, self.app.namespace, self.app.app)
        results = QueueSpec(
            names.result_queue(self.app.namespace, self.client_id),
            ((names.ns_results_exchange(self.app.namespace), self.client_id),),
            durable=False,
            arguments={"x-expires": RESULT_QUEUE_EXPIRES_MS},
        )
        queue = await results.declare(self._channel)
        await queue.consume(self._on_result)
        return self

    async def stop(self) -> None:
        """Stop listening; tasks still pending are cancelled."""
        for future in self._pending.values():
            future.cancel()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> TaskClient:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _on_result(self, incoming: AbstractIncomingMessage) -> None:
        try:
            outcomes = decode_outcomes(
                incoming.body, incoming.content_type, incoming.correlation_id
            )
        except InvalidMessage:
            outcomes = []
        for outcome in outcomes:
            self._resolve(outcome)
        await settle(incoming.ack())

    def _resolve(self, outcome: Outcome) -> None:
        future = self._pending.pop(outcome.task_id, None)
        if future is None:
            self.duplicates += 1
        elif not future.done():
            if outcome.ok:
                future.set_result(outcome.value)
            else:
                future.set_exception(TaskFailed(outcome.task_id, outcome.error, outcome.traceback))

    def _new_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Call, asyncio.Future[Any]]:
        call = Call(f"{self.client_id}.{next(self._ids)}", args, kwargs)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call.task_id] = future
        return call, future

    async def _publish(self, task: Task[Any, Any], calls: list[Call]) -> None:
        if len(calls) == 1:
            body, properties = encode_call(task.name, calls[0], self.client_id)
        else:
            body, properties = encode_batch(task.name, calls[0].task_id, calls, self.client_id)
        route = names.Route(names.ns_tasks_exchange(self.app.namespace), self.app.app)
        await self._bus.publish_raw(route, body, properties, mandatory=True)

    async def submit(self, task: Task[Any, Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Publish one call; the returned future completes with its value.

        Raises:
            TypeError: an argument is neither JSON nor bytes.
        """
        call, future = self._new_call(args, kwargs)
        try:
            await self._publish(task, [call])
        except BaseException:
            self._pending.pop(call.task_id, None)
            raise
        return future

    async def call(self, task: Task[Any, Any], *args: Any, **kwargs: Any) -> Any:
        """Run one call on a worker and return its value.

        Raises:
            TaskFailed: it failed on every attempt.
        """
        return await (await self.submit(task, *args, **kwargs))

    async def map(
        self,
        task: Task[Any, Any],
        inputs: Iterable[Any],
        *,
        batch_size: int = 1,
        window: int = 256,
        progress: bool | None = None,
        return_exceptions: bool = False,
    ) -> AsyncIterator[tuple[int, Any]]:
        """Run a task over many inputs; yield ``(index, value)`` as results arrive.

        Args:
            task: the task.
            inputs: each one argument, or a tuple of positional arguments.
            batch_size: calls packed into one message (for many small tasks).
            window: messages published but not yet confirmed, at most.
            progress: show a progress bar; default when stderr is a terminal.
            return_exceptions: yield a :class:`TaskFailed` as the value instead of raising.

        Raises:
            TaskFailed: a task failed on every attempt (unless ``return_exceptions``).
            ValueError: ``batch_size`` or ``window`` below 1.
        """
        if batch_size < 1 or window < 1:
            raise ValueError("batch_size and window must be at least 1")
        total = len(inputs) if isinstance(inputs, Sized) else None
        state = _MapState()
        publishing = asyncio.create_task(self._publish_all(task, inputs, batch_size, window, state))
        show = sys.stderr.isatty() if progress is None else progress
        with Progress(disable=not show) as bar:
            bar_task = bar.add_task(f"{self.app.app}.{task.name}", total=total)
            try:
                while not (publishing.done() and state.received == state.submitted):
                    index, future = await state.next_completed(publishing)
                    bar.advance(bar_task)
                    error = future.exception()
                    if error is not None and not return_exceptions:
                        raise error
                    yield index, error if error is not None else future.result()
                publishing.result()
            finally:
                publishing.cancel()

    async def _publish_all(
        self,
        task: Task[Any, Any],
        inputs: Iterable[Any],
        batch_size: int,
        window: int,
        state: _MapState,
    ) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        indexed = enumerate(inputs)
        while batch := list(itertools.islice(indexed, batch_size)):
            calls = []
            for index, item in batch:
                call, future = self._new_call(_as_call_arguments(item), {})
                state.track(index, future)
                calls.append(call)
            if len(in_flight) >= window:
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    finished.result()
            in_flight.add(asyncio.create_task(self._publish(task, calls)))
        for confirmed in asyncio.as_completed(in_flight):
            await confirmed
