"""The usage server: answers ``bus usage`` questions from InfluxDB (the I/O shell of
:mod:`services.metrics.usage`).

A namespace's question comes through its door, an admin's through the admins' door;
both land on one quorum queue any number of these servers share. Each answer is two
InfluxQL queries (four per app or PC: the samples' first and last times). While InfluxDB
cannot be reached, the answer says so instead of rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from bus import names
from bus.codec import Delivery
from bus.rpc import RpcServer
from bus.topology import QueueSpec
from schemas import UsageQuery, UsageReply, utc_now
from services.metrics.influx import query_v1
from services.metrics.usage import (
    Window,
    baseline_query,
    edge_query,
    usage_rows,
    window_query,
)

__all__ = ["UsageServer", "usage_query"]

log = logging.getLogger(__name__)

#: Runs one InfluxQL query, returns InfluxDB's JSON answer; raises OSError when it cannot.
Query = Callable[[str], dict[str, Any]]


def usage_query(api: str, url: str, database: str, token: str) -> Query:
    """How the server reads InfluxDB: its v1 query API (every 1.x; with ``api`` v2, a
    2.x whose database ``database`` maps to the bucket, given ``token``)."""
    bearer = token if api == "v2" else None
    return lambda text: query_v1(url, database, text, token=bearer)


class UsageServer(RpcServer[UsageQuery]):
    """Answers usage questions with InfluxDB's figures; see the module header."""

    def __init__(self, query: Query, *, prefetch: int = 4) -> None:
        spec = QueueSpec.quorum(
            names.service_queue("usage", "requests"),
            *((names.REQUESTS_EXCHANGE, key) for key in names.usage_request_keys()),
        )
        super().__init__(spec, (UsageQuery,), self._usage, prefetch=prefetch)
        self._query = query

    async def _usage(self, question: UsageQuery, _delivery: Delivery) -> UsageReply:
        window = Window.of(question, utc_now())

        def reply(**more: Any) -> UsageReply:
            return UsageReply(namespace=question.namespace, by=question.by, since=window.since,
                              until=window.until, **more)  # fmt: skip

        queries = [window_query(window), baseline_query(window)]
        if question.by != "day":
            queries += [edge_query(window, "first"), edge_query(window, "last")]
        try:
            within, before, *edges = await asyncio.gather(
                *(asyncio.to_thread(self._query, text) for text in queries)
            )
            rows = usage_rows(within, before, question.by, (edges[0], edges[1]) if edges else None)
        except (OSError, ValueError) as error:
            log.warning("usage: cannot read the figures: %s", error)
            return reply(unavailable=f"the usage figures cannot be read: {error}"[:1000])
        return reply(rows=tuple(rows))
