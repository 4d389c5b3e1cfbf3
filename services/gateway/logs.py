"""The gateway's logs operation: ``GET /v1/namespaces/{ns}/logs``.

It reads the namespace's log stream (:func:`bus.logs.read_logs`) on the caller's own
connection, so the broker checks that the caller may read it; the last ``tail`` lines
printed since ``since`` are answered, oldest first.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections import deque

import aiormq
from aiohttp import web

from bus.connection import Bus
from bus.logs import read_logs
from schemas.base import DNS_LABEL_PATTERN
from services.gateway.bodies import json_error, since_param
from services.gateway.models import LogEntry

__all__ = ["MAX_LOG_LINES", "LogRoutes"]

#: The most lines one answer holds.
MAX_LOG_LINES = 10_000
_LABEL = re.compile(DNS_LABEL_PATTERN)


class LogRoutes:
    """The logs handler of :class:`services.gateway.service.Gateway`."""

    @abstractmethod
    async def _connection(self, request: web.Request) -> Bus:
        """The caller's own broker connection."""

    async def _logs(self, request: web.Request) -> web.Response:
        query = request.query
        start = since_param(request, "10m")
        if isinstance(start, web.Response):
            return start
        tail, app, replica = query.get("tail", "100"), query.get("app"), query.get("replica")
        if not tail.isdigit() or int(tail) > MAX_LOG_LINES:
            return json_error(422, f"tail={tail[:32]!r}: give a count from 0 to {MAX_LOG_LINES}")
        for name, value in (("app", app), ("replica", replica)):
            if value is not None and not _LABEL.fullmatch(value):
                return json_error(422, f"{name}={value[:64]!r}: names are DNS labels")
        kept: deque[LogEntry] = deque(maxlen=int(tail))
        bus = await self._connection(request)
        try:
            async for item in read_logs(bus, request.match_info["namespace"], since=start,
                                        app=app, replica=replica):  # fmt: skip
                if item is None:
                    break
                batch, line = item
                kept.append(LogEntry(
                    at=line.at, app=batch.app, replica=batch.replica_id, node=batch.node,
                    stream=line.stream, text=line.text,
                ))  # fmt: skip
        except aiormq.exceptions.ChannelAccessRefused:
            return json_error(403, "your key may not read this namespace's logs")
        return web.json_response([entry.model_dump(mode="json") for entry in kept])
