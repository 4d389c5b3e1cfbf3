"""The worker: consumes an app's task queue and publishes each call's outcome.

A delivery is acked only after its result was published under a publisher confirm, so a
worker that dies (``kill -9``, a PC's person logs in) loses nothing: the broker delivers
the task again and the client keeps the first result it gets for each task id.

A failing call is tried again in place up to its task's ``retries``; a call over its
``timeout_s`` counts as a failure. After the last attempt the client gets the error with
its traceback, and a copy of the call goes to the app's dead-task queue
(``ns.<ns>.dead.<app>``). A pool process that dies under a call does not use up an
attempt (the platform kills processes on purpose), up to :data:`MAX_CHILD_DEATHS` times.
A malformed task message is answered with an error and dead-lettered, never a crash.
A call of a cancelled job (:mod:`bus.sdk.cancels`) is acknowledged without being run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

from bus import names
from bus.connection import PUBLISH_FAILURES, Bus
from bus.consumer import DEAD_BODY_LIMIT_BYTES, DEAD_REASON_HEADER, QueueConsumer
from bus.errors import InvalidMessage
from bus.sdk.app import App, Task
from bus.sdk.batcher import AckBatcher, ResultBatcher
from bus.sdk.cancels import CancelledJobs
from bus.sdk.checkpoints import CheckpointStore, Resume, Saved, with_context
from bus.sdk.pool import ChildDied, ProcessPool
from bus.sdk.protocol import (
    TASK_HEADER,
    Call,
    Outcome,
    decode_calls,
    encode_call,
    encode_outcomes,
    failure,
    is_raw_value,
    raised,
    run_all,
    run_sync,
)
from bus.sdk.status import status_from_environment
from bus.topology import declare_app, task_queue_spec

__all__ = ["MAX_CHILD_DEATHS", "NODE_ENV", "Worker"]

#: The PC a replica runs on, as its agent says.
NODE_ENV = "IDLECLOUD_NODE"

log = logging.getLogger(__name__)

#: How often a call may lose its pool process before it is reported failed.
MAX_CHILD_DEATHS = 3


class Worker(QueueConsumer):
    """Serves an app's tasks: at-least-once, results before acks, failures dead-lettered."""

    def __init__(self, app: App, *, target: str | None = None, concurrency: int = 1) -> None:
        """Create a worker.

        Args:
            app: the app whose tasks to serve.
            target: ``module:attribute`` of the app, for the process pool to import;
                needed when a task uses the ``process`` executor.
            concurrency: processes in the pool, threads for ``thread`` tasks, and the
                default prefetch.

        Raises:
            ValueError: a process task without a target, or concurrency below 1.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        needs_pool = any(task.executor == "process" for task in app.tasks.values())
        if needs_pool and target is None:
            raise ValueError("tasks running in processes need the app's MODULE:ATTRIBUTE target")
        super().__init__(
            task_queue_spec(app.namespace, app.app), prefetch=app.prefetch or concurrency
        )
        self.app = app
        self._pool = ProcessPool(target, concurrency) if needs_pool and target else None
        self._threads = asyncio.Semaphore(concurrency)
        self._acks = AckBatcher.lingering(self._prefetch)
        self._cancelled = CancelledJobs(app.namespace)
        #: Where its checkpointing tasks' calls keep their progress (made on start).
        self._checkpoints: CheckpointStore | None = None
        self._node = os.environ.get(NODE_ENV)  # on a PC of the platform: which one
        #: What an eviction now would throw away, for the agent (see bus.sdk.status).
        self._unsaved = status_from_environment()
        #: Calls of cancelled jobs acknowledged unstarted.
        self.skipped = 0

    async def start(self, bus: Bus) -> None:
        """Declare the app's queues, start the pool, and consume tasks.

        A replica's token may read its task queue but not declare it: then the platform
        has declared it, and the worker only checks that it exists.
        """
        self._results = ResultBatcher(bus, self.app.namespace, node=self._node)
        channel = await bus.channel()
        try:
            await declare_app(channel, self.app.namespace, self.app.app)
        except aiormq.exceptions.ChannelAccessRefused:
            self.passive = True
        finally:
            if not channel.is_closed:
                await channel.close()
        await self._cancelled.start(bus)
        if any(task.checkpoint_s is not None for task in self.app.tasks.values()):
            self._checkpoints = CheckpointStore(
                bus, self.app.namespace, on_stored=self._unsaved.saved
            )
            await self._checkpoints.start()
        if self._pool is not None:
            self._pool.start()
        await super().start(bus)

    async def stop(self, grace_s: float = 30.0) -> None:
        """Finish in-flight tasks within ``grace_s``, requeue the rest, stop the pool."""
        await super().stop(grace_s)
        await self._cancelled.stop()
        if self._checkpoints is not None:
            await self._checkpoints.stop()
        if self._pool is not None:
            self._pool.close()

    async def _process(self, incoming: AbstractIncomingMessage) -> None:
        self._acks.delivered(incoming)
        if incoming.reply_to in self._cancelled:
            self.skipped += 1
            self._acks.ack(incoming)
            return
        headers = incoming.headers or {}
        task_name = headers.get(TASK_HEADER)
        try:
            calls = decode_calls(incoming.body, incoming.content_type, incoming.message_id)
            task = self.app.tasks.get(task_name) if isinstance(task_name, str) else None
            if task is None:
                raise InvalidMessage(
                    f"unknown task {str(task_name)[:64]!r}; app {self.app.app} serves "
                    f"{sorted(self.app.tasks)}"
                )
        except InvalidMessage as error:
            await self._refuse(incoming, error.reason)
            return
        try:
            resumes = await self._resumes(task, calls)
        except PUBLISH_FAILURES as error:
            log.warning("could not read a checkpoint (%r); the task will be redelivered", error)
            await self._acks.nack(incoming)
            return
        task_ids = [call.task_id for call in calls]
        self._unsaved.started(*task_ids)  # a batch's results are published together
        try:
            outcomes = await self._execute(task, calls, resumes)
        finally:
            self._unsaved.ended(*task_ids)
        if incoming.redelivered:  # its first worker went away unanswered: the job's history
            outcomes = [replace(outcome, again=True) for outcome in outcomes]
        try:
            for call, outcome in zip(calls, outcomes, strict=True):
                if not outcome.ok:
                    body, properties = encode_call(task.name, call, reply_to=None)
                    await self._to_dead_queue(body, properties, outcome)
            await self._answer(incoming, outcomes)
        except PUBLISH_FAILURES as error:
            log.warning("could not publish a result (%r); the task will be redelivered", error)
            await self._acks.nack(incoming)
            return
        self._acks.ack(incoming)
        if resumes and self._checkpoints is not None:  # answered: no run needs them again
            for call in calls:
                await self._checkpoints.drop(call.task_id)

    async def _settle_finished(self) -> None:
        await self._acks.drain()

    async def _resumes(self, task: Task[Any, Any], calls: Sequence[Call]) -> dict[str, Resume]:
        """For a checkpointing task, where each call starts: its last saved state."""
        if task.checkpoint_s is None or self._checkpoints is None:
            return {}
        return {call.task_id: Resume(call.task_id, task.checkpoint_s,
                                     await self._checkpoints.load(call.task_id))
                for call in calls}  # fmt: skip

    def _bound(self, task: Task[Any, Any], call: Call, resumes: dict[str, Resume]) -> Call:
        """The call with its TaskContext, whose saves reach the store from any thread."""
        resume = resumes.get(call.task_id)
        if resume is None or self._checkpoints is None:
            return call
        store, loop = self._checkpoints, asyncio.get_running_loop()

        def from_a_thread(task_id: str, saved: Saved) -> None:
            loop.call_soon_threadsafe(store.save_soon, task_id, saved)

        sink = from_a_thread if task.executor == "thread" else store.save_soon
        return with_context(call, resume, sink)

    async def _execute(
        self, task: Task[Any, Any], calls: Sequence[Call], resumes: dict[str, Resume]
    ) -> list[Outcome]:
        final: dict[str, Outcome] = {}
        pending = list(calls)
        attempts = deaths = 0
        while pending:
            if attempts or deaths:  # a run again starts from what the last one saved
                with contextlib.suppress(*PUBLISH_FAILURES):  # else: from the older states
                    resumes = await self._resumes(task, pending)
            try:
                outcomes = await self._run(task, pending, resumes)
            except ChildDied as error:
                deaths += 1
                if deaths <= MAX_CHILD_DEATHS:
                    log.warning("%s; running its calls again", error)
                    continue
                outcomes = [failure(c, f"{error} {deaths} times") for c in pending]
            attempts += 1
            retry = attempts <= task.retries
            still_failing = []
            for call, outcome in zip(pending, outcomes, strict=True):
                if outcome.ok or not retry:
                    final[call.task_id] = outcome
                else:
                    still_failing.append(call)
            pending = still_failing
        return [final[call.task_id] for call in calls]

    async def _run(
        self, task: Task[Any, Any], calls: Sequence[Call], resumes: dict[str, Resume]
    ) -> list[Outcome]:
        if task.executor == "process":
            assert self._pool is not None
            timeout_s = task.timeout_s * len(calls) if task.timeout_s else None
            saves = self._checkpoints.save_soon if self._checkpoints is not None else None
            try:
                starts = [resumes.get(call.task_id) for call in calls]
                return await self._pool.run(task.name, calls, timeout_s, starts, saves)
            except TimeoutError:
                return [failure(c, f"timed out after {task.timeout_s:g} s") for c in calls]
        bound = [self._bound(task, call, resumes) for call in calls]
        if task.executor == "inline" and not task.is_async and task.timeout_s is None:
            return run_all(task.function, bound)
        return [await self._run_here(task, call) for call in bound]

    async def _run_here(self, task: Task[Any, Any], call: Call) -> Outcome:
        """One call in this process, within the task's timeout. A sync call's CPU time is
        its thread's; an async call's is this thread's while it ran, which counts the
        other coroutines that ran meanwhile too."""
        try:
            async with asyncio.timeout(task.timeout_s):
                if task.is_async:
                    started, began = time.thread_time(), time.perf_counter()
                    value = await task.function(*call.args, **call.kwargs)
                    return Outcome(call.task_id, True, value, cpu_s=time.thread_time() - started,
                                   wall_s=time.perf_counter() - began)  # fmt: skip
                if task.executor == "thread":
                    async with self._threads:
                        return await asyncio.to_thread(run_sync, task.function, call)
                return run_sync(task.function, call)
        except TimeoutError:
            return failure(call, f"timed out after {task.timeout_s:g} s")
        except Exception as error:
            return raised(call, error)

    async def _answer(self, incoming: AbstractIncomingMessage, outcomes: list[Outcome]) -> None:
        """Send the outcomes: a bytes value in a message of its own, the rest together."""
        if not incoming.reply_to or not incoming.message_id:
            return
        sends = [self._send_raw(incoming.reply_to, o) for o in outcomes if is_raw_value(o)]
        if len(sends) < len(outcomes):
            rest = [outcome for outcome in outcomes if not is_raw_value(outcome)]
            sends.append(self._results.send(incoming.reply_to, rest))
        if len(sends) == 1:  # the common case: no task wrapped around it
            await sends[0]
        else:
            await asyncio.gather(*sends)

    async def _send_raw(self, reply_to: str, outcome: Outcome) -> None:
        body, properties = encode_outcomes([outcome], outcome.task_id, self._node)
        route = names.Route(names.ns_results_exchange(self.app.namespace), reply_to)
        await self.bus.publish_raw(route, body, properties)

    async def _refuse(self, incoming: AbstractIncomingMessage, reason: str) -> None:
        """Answer a malformed task message with an error and dead-letter it."""
        log.warning("%s: refused a task message: %s", self.name, reason)
        refusal = failure(Call(incoming.message_id or "unknown"), f"refused: {reason}")
        properties = Basic.Properties(content_type=incoming.content_type, delivery_mode=2)
        try:
            await self._to_dead_queue(incoming.body[:DEAD_BODY_LIMIT_BYTES], properties, refusal)
            await self._answer(incoming, [refusal])
        except PUBLISH_FAILURES:
            await self._acks.nack(incoming)
            return
        self._acks.ack(incoming)

    async def _to_dead_queue(
        self, body: bytes, properties: Basic.Properties, outcome: Outcome
    ) -> None:
        """Put a failed or refused call in ``ns.<ns>.dead.<app>``, with why and the traceback."""
        properties.headers = {
            **(properties.headers or {}),
            "idlecloud-task-id": outcome.task_id,
            DEAD_REASON_HEADER: outcome.error[:1024],
            "idlecloud-traceback": outcome.traceback[-8192:],
        }
        log.info("%s: task %s dead-lettered: %s", self.name, outcome.task_id, outcome.error)
        route = names.Route(names.ns_dead_exchange(self.app.namespace), self.app.app)
        await self.bus.publish_raw(route, body, properties)
