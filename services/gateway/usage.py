"""The gateway's accounting operations: ``GET /v1/namespaces/{ns}/history`` (the jobs
that ended) and ``GET /v1/namespaces/{ns}/usage`` (CPU reserved and used).

Both ask the platform on the caller's own connection, so the broker decides what the
caller may ask: a breakdown of usage by PC goes through the admins' door, which a user's
key cannot publish to (the gateway says so before trying).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TypeVar

from aiohttp import web

from schemas import JobsQuery, JobsReply, Message, UsageQuery, UsageReply
from schemas.usage import USAGE_BY
from services.gateway.bodies import json_error, since_param
from services.gateway.page import CALLER

__all__ = ["HISTORY_SINCE", "AccountRoutes"]

R = TypeVar("R", bound=Message)
#: How far back history and usage look unless ``since`` says.
HISTORY_SINCE = "30d"


class AccountRoutes:
    """The history and usage handlers of :class:`services.gateway.service.Gateway`."""

    @abstractmethod
    async def _ask(self, request: web.Request, message: Message, expect: type[R]) -> R:
        """Send ``message`` by RPC on the caller's own connection."""

    async def _history(self, request: web.Request) -> web.Response:
        since = since_param(request, HISTORY_SINCE)
        if isinstance(since, web.Response):
            return since
        query = JobsQuery(namespace=request.match_info["namespace"], ended_since=since)
        reply = await self._ask(request, query, JobsReply)
        return web.json_response(reply.model_dump(mode="json"))

    async def _usage(self, request: web.Request) -> web.Response:
        since = since_param(request, HISTORY_SINCE)
        if isinstance(since, web.Response):
            return since
        by = request.query.get("by", "app")
        if by not in USAGE_BY:
            return json_error(422, f"by={by[:32]!r}: use app, pc or day")
        if by == "pc" and request[CALLER].role != "admin":
            return json_error(403, "usage by PC is an admin's question; ask by app or day")
        query = UsageQuery(namespace=request.match_info["namespace"], since=since, by=by)
        reply = await self._ask(request, query, UsageReply)
        if reply.unavailable:
            return json_error(503, reply.unavailable)
        return web.json_response(reply.model_dump(mode="json"))
