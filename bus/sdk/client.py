"""Submitting tasks and collecting their results, exactly one per task.

A client owns a result queue (``ns.<ns>.results.<client id>``) bound to its namespace's
results exchange: a quorum queue, so results outlive a broker node of a cluster, deleted
by the broker once unused for :data:`RESULT_QUEUE_EXPIRES_MS`. Every task it submits
carries a task id; the first result for an id completes it and any later one (the task
ran twice because its first worker died after answering) is counted and dropped. All
state stays with the client, as in the thesis.

A job (:meth:`TaskClient.submit_job`) is the durable kind: its results go to a stream on
the broker instead of this client's queue (see :mod:`bus.sdk.jobs`).

Throughput comes from keeping many publishes in flight: a quorum queue's confirm costs about
a millisecond, so :meth:`TaskClient.map` publishes up to ``window`` messages at once and
packs ``batch_size`` calls per message when asked.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sized
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel

from bus import names
from bus.abc import AppAddress, TaskAddress
from bus.connection import Bus
from bus.credentials import key_holder
from bus.defaults import BROKER_URL
from bus.errors import BusError, InvalidMessage
from bus.sdk.batcher import AckBatcher
from bus.sdk.jobs import Job, new_request_id, submit_calls
from bus.sdk.protocol import (
    NO_KWARGS,
    Call,
    Outcome,
    decode_outcomes,
    encode_batch,
    encode_call,
    result_wall_s,
)
from bus.sdk.sink import MapSink
from bus.sdk.sizing import messages
from bus.sdk.tally import new_job_id
from bus.topology import QueueSpec, declare_app
from schemas import JobSeal, JobSubmit, utc_now

__all__ = ["TaskClient", "TaskFailed", "connect_app"]

log = logging.getLogger(__name__)

#: An idle client's result queue is deleted by the broker after this long.
RESULT_QUEUE_EXPIRES_MS = 10 * 60 * 1000
#: Result messages delivered to a client and not yet acked, at most.
RESULT_PREFETCH = 1000


async def connect_app(app: AppAddress, purpose: str) -> Bus:
    """A connection for a client of ``app``: to its URL (else ``IDLECLOUD_URL``, else the
    local broker), with the configured API key's broker token kept fresh, if there is one.

    Raises:
        CredentialsRefused: the key was refused or the auth service cannot be reached.
    """
    url = app.url or os.environ.get("IDLECLOUD_URL") or BROKER_URL
    url, name, refresher = await key_holder(url, purpose)
    bus = await Bus(url, connection_name=name).connect()
    if refresher is not None:  # a long-lived client: keep its broker token fresh
        await refresher.start(bus)
    return bus


class TaskFailed(BusError):
    """A task failed on every attempt; ``error`` and ``traceback`` say how."""

    def __init__(self, task_id: str, error: str, traceback: str) -> None:
        super().__init__(f"task {task_id} failed: {error}")
        self.task_id = task_id
        self.error = error
        self.traceback = traceback


def _failure(outcome: Outcome) -> TaskFailed:
    return TaskFailed(outcome.task_id, outcome.error, outcome.traceback)


#: Where a call's outcome goes: called with the call's index and its outcome.
_Deliver = Callable[[int, Outcome], None]


def _as_call_arguments(item: Any) -> tuple[Any, ...]:
    return item if isinstance(item, tuple) else (item,)


class TaskClient:
    """Submits an app's tasks and awaits their results."""

    def __init__(self, bus: Bus, app: AppAddress) -> None:
        self._bus = bus
        self.app = app
        self.client_id = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        #: Per task id awaiting its outcome: where it goes, ``deliver(index, outcome)``.
        self._pending: dict[str, tuple[_Deliver, int]] = {}
        self._channel: AbstractRobustChannel | None = None
        self._acks = AckBatcher.lingering(RESULT_PREFETCH)
        self.duplicates = 0
        #: Task messages published (a batch is one).
        self.messages_sent = 0

    async def start(self) -> TaskClient:
        """Declare the app's queues (so no task is dropped before a worker exists) and ours."""
        self._channel = await self._bus.channel(prefetch=RESULT_PREFETCH)
        await declare_app(self._channel, self.app.namespace, self.app.app)
        results = QueueSpec(
            names.result_queue(self.app.namespace, self.client_id),
            ((names.ns_results_exchange(self.app.namespace), self.client_id),),
            arguments={"x-queue-type": "quorum", "x-expires": RESULT_QUEUE_EXPIRES_MS},
        )
        queue = await results.declare(self._channel)
        await queue.consume(self._on_result)
        return self

    async def stop(self) -> None:
        """Stop listening; calls still pending fail with :class:`TaskFailed`."""
        pending, self._pending = self._pending, {}
        for task_id, (deliver, index) in pending.items():
            deliver(
                index, Outcome(task_id, False, error="the client stopped before the result came")
            )
        if self._channel is not None:
            await self._acks.drain()
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> TaskClient:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _on_result(self, incoming: AbstractIncomingMessage) -> None:
        self._acks.delivered(incoming)
        try:
            outcomes = decode_outcomes(
                incoming.body, incoming.content_type, incoming.correlation_id
            )
        except InvalidMessage as error:
            log.warning("dropped a malformed result message: %s", error.reason)
            outcomes = []
        each_s = result_wall_s(incoming.headers, len(outcomes))
        for outcome in outcomes:
            outcome.wall_s = each_s
            self._resolve(outcome)
        self._acks.ack(incoming)

    def _resolve(self, outcome: Outcome) -> None:
        awaiting = self._pending.pop(outcome.task_id, None)
        if awaiting is None:
            self.duplicates += 1
        else:
            deliver, index = awaiting
            deliver(index, outcome)

    def _new_calls(
        self,
        arguments: Iterable[tuple[int, tuple[Any, ...]]],
        deliver: _Deliver,
        kwargs: Mapping[str, Any] = NO_KWARGS,
    ) -> list[Call]:
        """Calls of ``(index, args)`` with new task ids; each outcome goes to ``deliver``."""
        prefix, ids, pending = f"{self.client_id}.", self._ids, self._pending
        calls = []
        for index, args in arguments:
            call = Call(f"{prefix}{next(ids)}", args, kwargs)
            pending[call.task_id] = (deliver, index)
            calls.append(call)
        return calls

    async def _publish(
        self, task: TaskAddress, calls: list[Call], reply_to: str | None = None
    ) -> None:
        reply_to = reply_to or self.client_id
        if len(calls) == 1:
            body, properties = encode_call(task.name, calls[0], reply_to)
        else:
            body, properties = encode_batch(task.name, calls[0].task_id, calls, reply_to)
        route = names.Route(names.ns_tasks_exchange(self.app.namespace), self.app.app)
        await self._bus.publish_raw(route, body, properties, mandatory=True)
        self.messages_sent += 1

    async def submit(self, task: TaskAddress, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Publish one call; the returned future completes with its value.

        Raises:
            TypeError: an argument is neither JSON nor bytes.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def deliver(_index: int, outcome: Outcome) -> None:
            if future.done():
                return
            if outcome.ok:
                future.set_result(outcome.value)
            else:
                future.set_exception(_failure(outcome))

        (call,) = self._new_calls([(0, args)], deliver, kwargs or NO_KWARGS)
        try:
            await self._publish(task, [call])
        except BaseException:
            self._pending.pop(call.task_id, None)
            raise
        return future

    async def call(self, task: TaskAddress, *args: Any, **kwargs: Any) -> Any:
        """Run one call on a worker and return its value.

        Raises:
            TaskFailed: it failed on every attempt.
        """
        return await (await self.submit(task, *args, **kwargs))

    async def map(
        self,
        task: TaskAddress,
        inputs: Iterable[Any],
        *,
        batch_size: int | None = None,
        window: int = 256,
        progress: bool | None = None,
        return_exceptions: bool = False,
    ) -> AsyncIterator[tuple[int, Any]]:
        """Run a task over many inputs; yield ``(index, value)`` as results arrive.

        Args:
            task: the task.
            inputs: each one argument, or a tuple of positional arguments.
            batch_size: calls packed into one message; by default as many as make about
                50 ms of work by the run times results report (see
                :mod:`bus.sdk.sizing`): one per message for long tasks, up to 100 for
                tiny ones. A call whose only argument is bytes always goes alone.
            window: messages published but not yet confirmed, at most.
            progress: show a progress bar; default when stderr is a terminal.
            return_exceptions: yield a :class:`TaskFailed` as the value instead of raising.

        Raises:
            TaskFailed: a task failed on every attempt (unless ``return_exceptions``).
            ValueError: ``batch_size`` or ``window`` below 1.
        """
        if (batch_size is not None and batch_size < 1) or window < 1:
            raise ValueError("batch_size and window must be at least 1")
        total = len(inputs) if isinstance(inputs, Sized) else None
        sink = MapSink()

        def batches() -> Iterator[list[Call]]:
            indexed = enumerate(inputs)
            while batch := list(itertools.islice(indexed, batch_size or sink.sizer.size)):
                sink.submitted += len(batch)
                yield from messages(self._new_calls(
                    [(index, _as_call_arguments(item)) for index, item in batch], sink.put
                ))  # fmt: skip

        ready = None if batch_size else functools.partial(sink.sized, window)
        publishing = asyncio.create_task(
            self.publish_calls(task, batches(), window=window, ready=ready)
        )
        show = sys.stderr.isatty() if progress is None else progress
        from rich.progress import Progress  # here: a worker never draws a bar

        with Progress(disable=not show) as bar:
            bar_task = bar.add_task(f"{self.app.app}.{task.name}", total=total)
            try:
                while not (publishing.done() and sink.received == sink.submitted):
                    await sink.wait(publishing)
                    drained = len(sink.arrived)
                    sink.received += drained
                    bar.advance(bar_task, drained)
                    for _ in range(drained):
                        index, outcome = sink.arrived.popleft()
                        if outcome.ok:
                            yield index, outcome.value
                        elif return_exceptions:
                            yield index, _failure(outcome)
                        else:
                            raise _failure(outcome)
                publishing.result()
            finally:
                publishing.cancel()

    async def submit_job(
        self,
        task: TaskAddress,
        inputs: Iterable[Any],
        *,
        name: str = "",
        batch_size: int = 1,
        window: int = 256,
        progress: bool | None = None,
    ) -> Job:
        """Submit a job: the calls are on the broker, and their results kept there, when
        this returns; the caller may exit and anyone with the namespace's key attach.

        Args:
            task: the task.
            inputs: each one argument, or a tuple of positional arguments.
            name: a name to list the job by.
            batch_size: calls packed into one message.
            window: messages published but not yet confirmed, at most.
            progress: show a progress bar; default when stderr is a terminal.

        Raises:
            JobRefused: the jobs service refused the job (its reason names the bound).
            RpcTimeout: the jobs service does not answer.
            TypeError: an argument is neither JSON nor bytes.
        """
        if batch_size < 1 or window < 1:
            raise ValueError("batch_size and window must be at least 1")
        job = Job(self._bus, self.app.namespace, new_job_id())
        total = len(inputs) if isinstance(inputs, Sized) else None
        namespace = self.app.namespace
        await job.request(JobSubmit(
            namespace=namespace, request_id=new_request_id(), job_id=job.job_id,
            app=self.app.app, task=task.name, name=name, total=total, submitted_at=utc_now(),
            submitter=self._bus.user_name,
        ))  # fmt: skip
        show = sys.stderr.isatty() if progress is None else progress
        from rich.progress import Progress  # here: a worker never draws a bar

        with Progress(disable=not show) as bar:
            shown = bar.add_task(f"submitting {job.job_id}", total=total)

            def counted() -> Iterator[tuple[int, tuple[Any, ...]]]:
                for index, item in enumerate(inputs):
                    bar.advance(shown)
                    yield index, _as_call_arguments(item)

            batches = submit_calls(job.job_id, counted(), batch_size)
            published = await self.publish_calls(task, batches, window=window, reply_to=job.job_id)
        if total is None:
            await job.request(JobSeal(namespace=namespace, request_id=new_request_id(),
                                      job_id=job.job_id, total=published))  # fmt: skip
        return job

    def attach_job(self, job_id: str) -> Job:
        """A handle on a job of this app's namespace, by its id.

        Raises:
            ValueError: ``job_id`` is not a job id.
        """
        return Job.attach(self._bus, self.app.namespace, job_id)

    async def publish_calls(
        self,
        task: TaskAddress,
        batches: Iterator[list[Call]],
        *,
        window: int,
        reply_to: str | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """Publish each batch as one message (one call: a plain message), keeping up to
        ``window`` unconfirmed; return how many calls were published.

        Args:
            task: the task every call is of.
            batches: the calls, batch by batch (drawn only as the window allows).
            window: messages published but not yet confirmed, at most.
            reply_to: where results go (this client's id by default; a job's id).
            ready: awaited before each batch is drawn.

        Raises:
            TypeError: an argument is neither JSON nor bytes.
            BusError: a publish failed (its error); the others are cancelled.
        """
        slots = asyncio.Semaphore(window)
        in_flight: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []
        published = 0

        def finished(publish: asyncio.Task[None]) -> None:
            in_flight.discard(publish)
            slots.release()
            error = None if publish.cancelled() else publish.exception()
            if error is not None:
                failures.append(error)

        try:
            while True:
                await slots.acquire()  # before the next batch is drawn from the inputs
                if ready is not None:
                    await ready()
                if failures:
                    raise failures[0]
                calls = next(batches, None)
                if calls is None:
                    slots.release()
                    break
                publish = asyncio.create_task(self._publish(task, calls, reply_to))
                published += len(calls)
                in_flight.add(publish)
                publish.add_done_callback(finished)
            for _ in range(window):
                await slots.acquire()
            if failures:
                raise failures[0]
            return published
        finally:
            for publish in list(in_flight):
                publish.cancel()
