"""The gateway's job operations: ``/v1/namespaces/{ns}/jobs…``.

Like every other operation they run on the caller's own broker connection
(:mod:`.relay`): the job requests travel through the caller's door, the calls of a job
submitted over HTTP are published as the caller, and a job's results are read from its
stream with the caller's own read permission. The gateway adds no power of its own.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web
from pydantic import ValidationError

from bus.connection import Bus
from bus.sdk.client import TaskClient
from bus.sdk.jobs import Job, JobError, JobExpired, JobRefused, result_document
from bus.topology import declare_app
from schemas import JobsQuery, JobsReply, Message
from services.gateway.bodies import invalid_body, json_error, json_object
from services.gateway.models import Accepted, JobBody

__all__ = ["JobRoutes"]

R = TypeVar("R", bound=Message)


@dataclass(frozen=True, slots=True)
class _App:
    namespace: str
    app: str
    url: str | None = None


@dataclass(frozen=True, slots=True)
class _Task:
    name: str


class JobRoutes:
    """The job handlers of :class:`services.gateway.service.Gateway`."""

    @abstractmethod
    async def _ask(self, request: web.Request, message: Message, expect: type[R]) -> R:
        """Send ``message`` by RPC on the caller's own connection."""

    @abstractmethod
    async def _connection(self, request: web.Request) -> Bus:
        """The caller's own broker connection."""

    async def _job(self, request: web.Request) -> Job:
        """The job the path names (its route admits only a job id's shape)."""
        namespace, job_id = request.match_info["namespace"], request.match_info["job"]
        return Job.attach(await self._connection(request), namespace, job_id)

    async def _jobs(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        reply = await self._ask(request, JobsQuery(namespace=namespace), JobsReply)
        return web.json_response(reply.model_dump(mode="json"))

    async def _show_job(self, request: web.Request) -> web.Response:
        job = await self._job(request)
        try:
            view = await job.status()
        except JobError as error:
            return json_error(404, str(error))
        return web.json_response(view.model_dump(mode="json"))

    async def _submit_job(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        if isinstance(body, web.Response):
            return body
        if isinstance(body.get("inputs"), list):  # strict models take tuples, JSON has lists
            body["inputs"] = tuple(tuple(x) if isinstance(x, list) else x for x in body["inputs"])
        try:
            job_body = JobBody(**body)
        except (ValidationError, TypeError) as error:
            return invalid_body(error)
        namespace = request.match_info["namespace"]
        bus = await self._connection(request)
        channel = await bus.channel()
        await declare_app(channel, namespace, job_body.app)
        await channel.close()
        client = TaskClient(bus, _App(namespace, job_body.app))
        try:
            job = await client.submit_job(_Task(job_body.task), job_body.inputs,
                                          name=job_body.name, batch_size=job_body.batch_size,
                                          progress=False)  # fmt: skip
        except JobRefused as error:
            return json_error(409, str(error))
        except TypeError as error:
            return json_error(422, str(error))
        return web.json_response((await job.status()).model_dump(mode="json"), status=201)

    async def _job_results(self, request: web.Request) -> web.StreamResponse:
        """What the job's stream holds now, one JSON line a result (by input index)."""
        job = await self._job(request)
        try:
            view = await job.status()
        except JobError as error:
            return json_error(404, str(error))
        if view.state == "expired":
            return json_error(410, f"job {job.job_id} expired: its results are deleted")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            async for index, outcome in job.results(order="input", wait=False):
                line = json.dumps(result_document(index, outcome), separators=(",", ":"))
                await response.write(line.encode() + b"\n")
        except JobExpired:
            pass  # it expired while being read: what was read stands
        await response.write_eof()
        return response

    async def _cancel_job(self, request: web.Request) -> web.Response:
        return await self._job_request(request, "cancel")

    async def _delete_job(self, request: web.Request) -> web.Response:
        return await self._job_request(request, "delete")

    async def _job_request(self, request: web.Request, verb: str) -> web.Response:
        job = await self._job(request)
        try:
            request_id = await (job.cancel() if verb == "cancel" else job.delete())
        except JobRefused as error:
            status = 404 if str(error).startswith("no job") else 409
            return json_error(status, str(error))
        return web.json_response(Accepted(accepted=True, request_id=request_id).model_dump())
