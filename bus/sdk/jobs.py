"""Jobs from code: submit, walk away, and attach by id from any machine.

A job is opened with the jobs service (``JobSubmit``, with an id drawn here at random),
its calls are published under confirms with the job's id as ``reply_to`` and ids
``<job id>.<index>``, and it is sealed with their number when that was not known up front.
From then on the submitter may exit: results land in the job's stream on the broker.

A reader (:meth:`Job.results`) reads that stream from the start, keeps the first outcome
for each index and stops once it has every call's; how many that is comes from the jobs
service, which follows the same stream. Any number of readers may read a job, any number
of times. Questions and requests go through the namespace's door, so only the
namespace's keys (and admins') can see or change its jobs; its stream only they can read.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any, Literal

from aio_pika.abc import AbstractIncomingMessage

from bus.connection import Bus
from bus.errors import InvalidMessage, RequestRefused
from bus.rpc import RpcClient
from bus.sdk.protocol import Call, Outcome, decode_outcomes
from bus.sdk.tally import JobTally, task_id
from bus.streams import StreamTail
from bus.topology import job_stream_spec
from schemas import (
    JobCancel,
    JobDelete,
    JobsQuery,
    JobsReply,
    JobView,
    Message,
    Owner,
    RequestResult,
)
from schemas.jobs import JOB_ID_PATTERN

__all__ = [
    "ENDED",
    "Job",
    "JobError",
    "JobExpired",
    "JobRefused",
    "checked_job_id",
    "new_request_id",
    "result_document",
    "submit_calls",
]

#: States in which a job will get no more results.
ENDED = frozenset({"done", "cancelled", "expired", "deleted"})
#: How often a waiting reader asks the jobs service whether the job moved on.
_POLL_S = 2.0


class JobError(RequestRefused):
    """A job request was refused, or the job is not there."""


class JobRefused(JobError):
    """The jobs service refused a request; the message says why."""


class JobExpired(JobError):
    """The job's results were kept for its namespace's retention period and are gone."""


def new_request_id() -> str:
    """A fresh request id for a job request (the jobs service applies each id once)."""
    return uuid.uuid4().hex[:16]


def checked_job_id(job_id: str) -> str:
    """``job_id``, if it is a job id.

    Raises:
        ValueError: it is not, saying what one looks like.
    """
    if not re.fullmatch(JOB_ID_PATTERN, job_id):
        raise ValueError(f"{job_id[:64]!r} is not a job id (j and 20 hex digits, as submit gave)")
    return job_id


class Job:
    """A handle on one job: its status, its results, waiting, cancelling, deleting."""

    def __init__(self, bus: Bus, namespace: str, job_id: str) -> None:
        """A handle on ``namespace``'s job ``job_id`` (nothing is checked until used)."""
        self._bus = bus
        self.namespace = namespace
        self.job_id = job_id

    @classmethod
    def attach(cls, bus: Bus, namespace: str, job_id: str) -> Job:
        """A handle on a job by its id.

        Raises:
            ValueError: ``job_id`` is not a job id.
        """
        return cls(bus, namespace, checked_job_id(job_id))

    def __repr__(self) -> str:
        return f"Job({self.namespace}/{self.job_id})"

    async def _ask(self, request: Message, expect: type[Any]) -> Any:
        client = await RpcClient(self._bus, Owner.namespace(self.namespace)).start()
        try:
            return await client.call(request, expect, timeout_s=15.0)
        finally:
            await client.stop()

    async def request(self, request: Message) -> None:
        """Send a job request (submit, seal, cancel, delete) for this namespace.

        Raises:
            JobRefused: the jobs service refused it (the reason says why).
            RpcTimeout: the jobs service does not answer.
        """
        result: RequestResult = await self._ask(request, RequestResult)
        if not result.accepted:
            raise JobRefused(result.reason)

    async def status(self) -> JobView:
        """The job's state and counts, as the jobs service has them now.

        Raises:
            JobError: the namespace has no such job (never, or deleted).
        """
        reply: JobsReply = await self._ask(
            JobsQuery(namespace=self.namespace, job_id=self.job_id), JobsReply
        )
        if not reply.jobs:
            raise JobError(reply.reason or f"no job {self.job_id}")
        return reply.jobs[0]

    async def cancel(self) -> str:
        """Cancel: no replica starts another of its calls; results so far stay. Returns
        the request's id."""
        request = JobCancel(
            namespace=self.namespace, request_id=new_request_id(), job_id=self.job_id
        )
        await self.request(request)
        return request.request_id

    async def delete(self) -> str:
        """Delete the job and its stored results. Returns the request's id."""
        request = JobDelete(
            namespace=self.namespace, request_id=new_request_id(), job_id=self.job_id
        )
        await self.request(request)
        return request.request_id

    async def wait(self, *, poll_s: float = 1.0, progress: bool = False) -> JobView:
        """Return the job's view once it is done, cancelled or expired.

        Args:
            poll_s: how often to ask.
            progress: show a progress bar on stderr.
        """
        from rich.progress import Progress  # here: a worker never draws a bar

        with Progress(disable=not progress) as bar:
            shown = bar.add_task(self.job_id, total=None)
            while True:
                view = await self.status()
                bar.update(shown, total=view.total, completed=view.done + view.failed)
                if view.state in ENDED:
                    return view
                await asyncio.sleep(poll_s)

    async def results(
        self, *, order: Literal["completed", "input"] = "completed", wait: bool = True
    ) -> AsyncIterator[tuple[int, Outcome]]:
        """Every call's outcome, once each: ``(index, outcome)``.

        Args:
            order: as the results were stored (``completed``), or by input index
                (``input``; calls of a cancelled job that never ran are left out).
            wait: for a job still running, wait for every call's result; else stop at
                what is stored now.

        Raises:
            JobExpired: its results are gone.
            JobError: the namespace has no such job.
        """
        view = await self.status()
        if view.state == "deleted":
            raise JobError(f"job {self.job_id} was deleted: only its history is kept")
        if view.state == "expired":
            raise JobExpired(
                f"job {self.job_id} expired at {_when(view.ended_at)}: its results were "
                "deleted after the namespace's retention period"
            )
        arrived: deque[tuple[int, Outcome]] = deque()
        wake = asyncio.Event()
        tally = JobTally(self.job_id)

        def take(_offset: int, incoming: AbstractIncomingMessage) -> None:
            try:
                outcomes = decode_outcomes(
                    incoming.body, incoming.content_type, incoming.correlation_id
                )
            except InvalidMessage:
                return
            arrived.extend(tally.add(outcomes, len(incoming.body), 0.0))
            wake.set()

        channel = await self._bus.channel(prefetch=2000)
        tail = StreamTail(job_stream_spec(self.namespace, self.job_id), take)
        try:
            await tail.start(channel)
            ordered = _InInput() if order == "input" else None
            while True:
                while arrived:
                    item = arrived.popleft()
                    for ready in ordered.put(*item) if ordered else (item,):
                        yield ready
                if view.state in ENDED or not wait:
                    target = view.done + view.failed
                else:
                    target = view.total if view.total is not None else -1
                if target >= 0 and tally.answered >= target:
                    break
                try:
                    await asyncio.wait_for(wake.wait(), _POLL_S)
                    wake.clear()
                except TimeoutError:
                    view = await self.status()
                    if view.state == "expired":
                        raise JobExpired(f"job {self.job_id} expired while being read") from None
            for ready in ordered.rest() if ordered else ():
                yield ready
        finally:
            await tail.stop()
            await channel.close()


class _InInput:
    """Outcomes put back in input order: each is let out once all before it are."""

    def __init__(self) -> None:
        self.next = 0
        self.held: dict[int, Outcome] = {}

    def put(self, index: int, outcome: Outcome) -> list[tuple[int, Outcome]]:
        self.held[index] = outcome
        ready = []
        while self.next in self.held:
            ready.append((self.next, self.held.pop(self.next)))
            self.next += 1
        return ready

    def rest(self) -> list[tuple[int, Outcome]]:
        """What is held (calls before it never answered), in index order."""
        ready = sorted(self.held.items())
        self.held.clear()
        return ready


def result_document(index: int, outcome: Outcome) -> dict[str, Any]:
    """One result as a JSON document (a line of ``bus job results``, of the REST API's
    results): its index, and its value (bytes in base64) or its error."""
    document: dict[str, Any] = {"index": index, "ok": outcome.ok}
    if not outcome.ok:
        document["error"] = outcome.error
    elif isinstance(outcome.value, bytes | bytearray):
        document["value_base64"] = base64.b64encode(outcome.value).decode()
    else:
        document["value"] = outcome.value
    return document


def _when(moment: datetime | None) -> str:
    return "an unknown time" if moment is None else f"{moment:%Y-%m-%d %H:%M} UTC"


def submit_calls(
    job_id: str, inputs: Iterator[tuple[int, tuple[Any, ...]]], batch_size: int
) -> Iterator[list[Call]]:
    """A job's calls, ``batch_size`` to a message, with ids ``<job id>.<index>``."""
    while batch := list(itertools.islice(inputs, batch_size)):
        yield [Call(task_id(job_id, index), args) for index, args in batch]
