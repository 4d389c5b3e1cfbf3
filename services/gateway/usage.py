"""The gateway's accounting operations: ``GET /v1/namespaces/{ns}/history`` (the jobs
that ended) and ``GET /v1/namespaces/{ns}/usage`` (CPU reserved and used).

Both ask the platform on the caller's own connection, so the broker decides what the
caller may ask: a breakdown of usage by PC goes through the admins' door, which a user's
key cannot publish to (the gateway says so before trying).
"""

from __future__ import annotations

from abc import abstractmethod
from datetime import datetime, timedelta
from typing import TypeVar

from aiohttp import web

from bus.logs import parse_span
from schemas import JobsQuery, JobsReply, Message, UsageBy, UsageQuery, UsageReply, utc_now
from services.gateway.bodies import json_error
from services.gateway.page import CALLER

__all__ = ["HISTORY_SINCE", "MAX_SINCE", "AccountRoutes"]

R = TypeVar("R", bound=Message)
#: How far back history and usage look unless ``since`` says, and at most.
HISTORY_SINCE = "30d"
MAX_SINCE = timedelta(days=3650)
_BY: tuple[UsageBy, ...] = ("app", "pc", "day")


def _since(request: web.Request) -> datetime | web.Response:
    """The moment the ``since`` parameter names, or the 422 that says why it does not."""
    text = request.query.get("since", HISTORY_SINCE)
    try:
        span = parse_span(text)
    except ValueError as error:
        return json_error(422, f"since: {error}")
    if span > MAX_SINCE:  # the platform keeps nothing older; a Timestamp cannot say it
        return json_error(422, f"since={text[:32]!r}: at most {MAX_SINCE.days}d (ten years)")
    return utc_now() - span


class AccountRoutes:
    """The history and usage handlers of :class:`services.gateway.service.Gateway`."""

    @abstractmethod
    async def _ask(self, request: web.Request, message: Message, expect: type[R]) -> R:
        """Send ``message`` by RPC on the caller's own connection."""

    async def _history(self, request: web.Request) -> web.Response:
        since = _since(request)
        if isinstance(since, web.Response):
            return since
        query = JobsQuery(namespace=request.match_info["namespace"], ended_since=since)
        reply = await self._ask(request, query, JobsReply)
        return web.json_response(reply.model_dump(mode="json"))

    async def _usage(self, request: web.Request) -> web.Response:
        since = _since(request)
        if isinstance(since, web.Response):
            return since
        by = request.query.get("by", "app")
        if by not in _BY:
            return json_error(422, f"by={by[:32]!r}: use app, pc or day")
        if by == "pc" and request[CALLER].role != "admin":
            return json_error(403, "usage by PC is an admin's question; ask by app or day")
        query = UsageQuery(namespace=request.match_info["namespace"], since=since, by=by)
        reply = await self._ask(request, query, UsageReply)
        if reply.unavailable:
            return json_error(503, reply.unavailable)
        return web.json_response(reply.model_dump(mode="json"))
