"""The jobs service: every job's record, kept in the journal, and its results followed.

Theory of operation. A job's calls travel like any other (``ns.<ns>.tasks``, keyed by
app) with the job's id as ``reply_to``, so their results land in the job's stream
``idlecloud.ns.<ns>.job.<job id>`` (:func:`bus.topology.job_stream_spec`), which only the
platform declares and the namespace only reads. The leader, one request at a time:

- **submit** admits a job whose id is new while the namespace stores less than its bound
  of results (else it refuses, naming both numbers); it declares the job's stream and the
  namespace's cancellations, journals the request, and starts following the stream.
- **follow**: a :class:`bus.sdk.tally.JobTally` per open job counts first outcomes, failures,
  duplicates, stored bytes and the rate. A sealed job with an outcome for every call is
  journaled as ended (``JobEnded``, done) and no longer followed.
- **cancel** writes the job's id into ``idlecloud.ns.<ns>.cancels``; every worker of
  the namespace reads that stream and drops the job's calls unstarted from then on.
- **delete** deletes the stream (the record stays: the history); **expire** (every
  ``sweep_s``) deletes the streams of jobs that ended more than ``retention_s`` ago and
  journals them as expired, so an expired job is reported as such, not as empty; records
  of jobs that ended more than ``history_s`` ago are forgotten.
- **submit** also refuses a job whose ``submitter`` is not the sender the broker names.
- **questions** are answered from the records, with the live tallies over them.

A new leader follows every open or cancelled job from its stream's first offset again,
so its counts are the stream's, whatever the previous leader had seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel
from pamqp.commands import Basic

from bus import names
from bus.codec import Delivery
from bus.errors import InvalidMessage
from bus.rpc import RpcServer
from bus.sdk.protocol import NODE_HEADER, decode_outcomes, result_costs
from bus.sdk.tally import JobTally
from bus.streams import StreamTail
from bus.topology import QueueSpec, cancels_spec, declare_stream, job_stream_spec, queue_exists
from schemas import (
    JobCancel,
    JobDelete,
    JobEnded,
    JobForgotten,
    JobSeal,
    JobsQuery,
    JobsReply,
    JobSubmit,
    JobView,
    Message,
    RequestResult,
    utc_now,
)
from schemas.jobs import JOB_COUNTS
from services.base import ControlService
from services.state import JobKey, digest

__all__ = ["JobSettings", "JobsService"]

log = logging.getLogger(__name__)

Request = JobSubmit | JobSeal | JobCancel | JobDelete | JobsQuery
_REQUESTS: tuple[type[Request], ...] = (JobSubmit, JobSeal, JobCancel, JobDelete, JobsQuery)
_MIB = 1024**2
EndState = Literal["done", "cancelled", "expired"]
_ENDED = frozenset({"done", "cancelled", "expired", "deleted"})
Change = JobSubmit | JobSeal | JobCancel | JobDelete


@dataclass(frozen=True, slots=True)
class JobSettings:
    """How long ended jobs' results are kept, and how much a namespace may keep."""

    retention_s: float = 7 * 86_400.0
    max_stored_bytes: int = 1024 * _MIB  # per namespace
    sweep_s: float = 30.0
    #: How long the record of an ended job stays in the history.
    history_s: float = 180 * 86_400.0


@dataclass
class _Followed:
    tally: JobTally
    tail: StreamTail


class JobsService(ControlService):
    """Admits, follows, cancels, deletes and expires jobs; see the module's header."""

    name = "jobs"

    def __init__(self, settings: JobSettings | None = None, *, retry_s: float = 0.5) -> None:
        super().__init__(retry_s=retry_s)
        self.settings = settings or JobSettings()
        spec = QueueSpec.quorum(
            names.service_queue(self.name, "requests"),
            *((names.REQUESTS_EXCHANGE, key) for key in names.job_request_keys()),
        )
        self._server: RpcServer[Request] = RpcServer(spec, _REQUESTS, self._handle, prefetch=1)
        self._followed: dict[JobKey, _Followed] = {}
        self._channel: AbstractRobustChannel | None = None
        self._endings: asyncio.Queue[JobKey] = asyncio.Queue()
        self._ending: set[JobKey] = set()

    def leader_queues(self) -> tuple[QueueSpec, ...]:
        return (self._server.spec,)

    async def lead(self, epoch: int) -> None:
        self._channel = await self.bus.channel(prefetch=2000)
        for key, job in list(self.state.jobs.items()):
            if job.state in ("submitting", "running", "cancelled"):
                await self._follow(key)
        self._endings, self._ending = asyncio.Queue(), set()
        self.while_leading("expiry", self._expire_forever)
        self.while_leading("endings", self._end_forever)
        await self._server.start(self.bus)

    async def step_down(self) -> None:
        await self._server.stop(5.0)
        for followed in self._followed.values():
            await followed.tail.stop()
        self._followed.clear()
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
        self._channel = None

    # -- following ---------------------------------------------------------------------

    async def _follow(self, key: JobKey) -> None:
        namespace, job_id = key
        if key in self._followed or self._channel is None:
            return
        tally = JobTally(job_id)
        spec = job_stream_spec(namespace, job_id)
        if not await queue_exists(self.bus, spec):  # asked aside: a miss closes a channel
            log.warning("job %s/%s has no results stream; not followed", namespace, job_id)
            return
        tail = StreamTail(spec, lambda _o, m: self._count(key, tally, m))
        await tail.start(self._channel)
        self._followed[key] = _Followed(tally, tail)

    async def _unfollow(self, key: JobKey) -> None:
        followed = self._followed.pop(key, None)
        if followed is not None:
            await followed.tail.stop()

    def _count(self, key: JobKey, tally: JobTally, incoming: AbstractIncomingMessage) -> None:
        try:
            outcomes = decode_outcomes(
                incoming.body, incoming.content_type, incoming.correlation_id
            )
        except InvalidMessage as error:
            log.warning("job %s/%s: a malformed result: %s", *key, error.reason)
            outcomes = []
        headers = incoming.headers or {}
        node = headers.get(NODE_HEADER)
        tally.add(outcomes, len(incoming.body), time.monotonic(),
                  node if isinstance(node, str) else None,
                  result_costs(headers, len(outcomes)))  # fmt: skip
        self._end_if_answered(key)

    def _end_if_answered(self, key: JobKey) -> None:
        """Queue a sealed job whose every call has an outcome to be journaled as done."""
        job, followed = self.state.jobs.get(key), self._followed.get(key)
        if job is None or followed is None or job.state != "running" or key in self._ending:
            return
        if followed.tally.answered >= (job.total or 0):
            self._ending.add(key)
            self._endings.put_nowait(key)

    async def _end_forever(self) -> None:
        while True:
            key = await self._endings.get()
            try:
                followed = self._followed.get(key)
                await self._end(key, "done", followed.tally if followed else None)
                await self._unfollow(key)
            finally:
                self._ending.discard(key)

    async def _end(self, key: JobKey, state: EndState, tally: JobTally | None) -> None:
        job = self.state.jobs[key]
        counts = self._counts(job, tally)
        ended = JobEnded(namespace=key[0], job_id=key[1], state=state, at=utc_now(), **counts)
        await self.journal.append_and_read(ended)

    @staticmethod
    def _counts(job: JobView, tally: JobTally | None) -> dict[str, Any]:
        """A job's counts and PCs: its record's, or the live tally's where it saw more."""
        counts: dict[str, Any] = {name: getattr(job, name) for name in JOB_COUNTS}
        if tally is None:
            return counts | {"nodes": job.nodes}
        counts = {name: max(counts[name], getattr(tally, name)) for name in JOB_COUNTS}
        counts["cpu_s"] = round(counts["cpu_s"], 3)
        return counts | {"nodes": tuple(sorted(set(job.nodes) | tally.nodes))}

    # -- expiry -------------------------------------------------------------------------

    async def _expire_forever(self) -> None:
        while True:
            await self.expire()
            await asyncio.sleep(self.settings.sweep_s)

    async def expire(self) -> list[JobKey]:
        """Delete the results of every job that ended more than ``retention_s`` ago, and
        forget the records of those that ended more than ``history_s`` ago."""
        now = utc_now()
        forgotten = now - timedelta(seconds=self.settings.history_s)
        for key, job in list(self.state.jobs.items()):
            if job.state in _ENDED and (job.ended_at or job.submitted_at) < forgotten:
                await self.journal.append_and_read(JobForgotten(namespace=key[0], job_id=key[1]))
        horizon = now - timedelta(seconds=self.settings.retention_s)
        expired = [
            key
            for key, job in self.state.jobs.items()
            if job.state not in ("expired", "deleted")
            and job.ended_at is not None
            and job.ended_at < horizon
        ]
        for key in expired:
            tally = self._followed[key].tally if key in self._followed else None
            await self._unfollow(key)
            await self._delete_stream(key)
            await self._end(key, "expired", tally)
            log.info("job %s/%s expired; its results are deleted", *key)
        return expired

    async def _delete_stream(self, key: JobKey) -> None:
        channel = await self.bus.channel()
        try:
            await channel.queue_delete(names.job_stream(*key))
        finally:
            if not channel.is_closed:
                await channel.close()

    # -- requests -----------------------------------------------------------------------

    async def _handle(self, request: Request, delivery: Delivery) -> Message:
        if isinstance(request, JobsQuery):
            return self.reply(request.namespace, request.job_id, request.ended_since)
        if isinstance(request, JobSubmit) and request.submitter != delivery.user_id:
            return self._result(request, False, f"submitter {request.submitter[:64]!r} is "
                                f"not the sender, {delivery.user_id!r}")  # fmt: skip
        key = (request.namespace, request.job_id)
        known = self.state.applied.get(request.request_id)
        if known is not None:  # a redelivery, or the same id for something else
            same = known == digest(request)
            return self._result(request, same, "" if same else "request id already used")
        reason = await self._act(key, request)
        return self._result(request, not reason, reason)

    async def _act(self, key: JobKey, request: Change) -> str:
        """Carry out a request; the reason it was refused, or ``""``."""
        job = self.state.jobs.get(key)
        match request:
            case JobSubmit():
                if job is not None:
                    return f"job id {request.job_id} is already in use; draw another"
                if refusal := self._over_bound(request.namespace):
                    return refusal
                channel = await self.bus.channel()
                await channel.declare_exchange(
                    names.ns_results_exchange(request.namespace), durable=True
                )
                await channel.close()
                await declare_stream(self.bus, cancels_spec(request.namespace))
                await declare_stream(self.bus, job_stream_spec(*key))
                await self.journal.append_and_read(request)
                await self._follow(key)
            case _ if job is None:
                return f"no job {request.job_id} in namespace {request.namespace}"
            case JobSeal():
                if job.state != "submitting":
                    return f"job {request.job_id} is {job.state}, not submitting"
                await self.journal.append_and_read(request)
                self._end_if_answered(key)
            case JobCancel():
                if job.state in ("done", "expired", "deleted"):
                    return f"job {request.job_id} is {job.state}: nothing to cancel"
                if job.state != "cancelled":
                    await self._announce_cancel(key)
                    followed = self._followed.get(key)
                    await self._end(key, "cancelled", followed.tally if followed else None)
            case JobDelete() if job.state != "deleted":
                await self._unfollow(key)
                await self._delete_stream(key)
                await self.journal.append_and_read(request)
        return ""

    async def _announce_cancel(self, key: JobKey) -> None:
        body = key[1].encode()
        properties = Basic.Properties(delivery_mode=2, message_id=uuid.uuid4().hex)
        route = names.Route(names.DEFAULT_EXCHANGE, names.job_cancels_stream(key[0]))
        await self.bus.publish_raw(route, body, properties, mandatory=True)

    def _over_bound(self, namespace: str) -> str:
        stored = self.stored_bytes(namespace)
        limit = self.settings.max_stored_bytes
        if stored < limit:
            return ""
        return (
            f"namespace {namespace} keeps {_size(stored)} of job results, its bound is "
            f"{_size(limit)}: delete finished jobs (bus job delete) or wait until they "
            f"expire ({self.settings.retention_s / 86_400:g} days after they end)"
        )

    def stored_bytes(self, namespace: str) -> int:
        """What the namespace's jobs keep on the broker, as counted so far."""
        return sum(
            self._view(key, job).stored_bytes
            for key, job in self.state.jobs.items()
            if key[0] == namespace and job.state != "expired"
        )

    def _view(self, key: JobKey, job: JobView) -> JobView:
        followed = self._followed.get(key)
        update: dict[str, object] = dict(self._counts(job, followed.tally if followed else None))
        if followed is not None:
            update["rate_per_s"] = round(followed.tally.rate_per_s(time.monotonic()), 3)
        if job.ended_at is not None and job.state not in ("expired", "deleted"):
            update["expires_at"] = job.ended_at + timedelta(seconds=self.settings.retention_s)
        return job.model_copy(update=update)

    def reply(
        self, namespace: str, job_id: str | None = None, ended_since: datetime | None = None
    ) -> JobsReply:
        """The namespace's jobs (or one), newest first, with live counts; with
        ``ended_since``, its history instead: the jobs that ended since, deleted too."""

        def wanted(key: JobKey, job: JobView) -> bool:
            if key[0] != namespace or (job_id is not None and key[1] != job_id):
                return False
            if ended_since is None:
                return job_id is not None or job.state != "deleted"
            return job.state in _ENDED and (job.ended_at or job.submitted_at) >= ended_since

        views = [self._view(key, job) for key, job in self.state.jobs.items() if wanted(key, job)]
        views.sort(key=lambda view: view.submitted_at, reverse=True)
        reason = f"no job {job_id} in namespace {namespace}" if job_id and not views else ""
        return JobsReply(
            namespace=namespace, jobs=tuple(views[:10_000]),
            stored_bytes=self.stored_bytes(namespace),
            stored_bytes_limit=self.settings.max_stored_bytes,
            retention_s=int(self.settings.retention_s), reason=reason, at=utc_now(),
        )  # fmt: skip

    def _result(self, request: Change, accepted: bool, reason: str) -> RequestResult:
        log.info("%s %s: %s", request.schema_name, request.request_id, reason or "admitted")
        return RequestResult(
            request_id=request.request_id,
            namespace=request.namespace, accepted=accepted, reason=reason,
        )  # fmt: skip


def _size(count: int) -> str:
    return f"{count} bytes" if count < _MIB else f"{count / _MIB:.1f} MiB"
