"""Writing line protocol to InfluxDB 1.x over its v1 HTTP API (``/write``).

InfluxDB 1.6.7, the one Debian ships, has no ``/api/v2`` (it arrived in 1.8), so
influxdb-client cannot write to it; the v1 endpoint takes the same line protocol.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

import aiohttp

__all__ = ["InfluxUnavailable", "InfluxV1", "query_v1"]


class InfluxUnavailable(Exception):
    """InfluxDB did not take a batch (down, or refusing); the message says why."""


class InfluxV1:
    """One InfluxDB 1.x database, written to in batches of lines."""

    def __init__(self, url: str, database: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None

    async def write(self, lines: list[str]) -> None:
        """Write the lines (nanosecond timestamps).

        Raises:
            InfluxUnavailable: InfluxDB cannot be reached or refused the batch.
        """
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        target = f"{self.url}/write?db={self.database}&precision=ns"
        try:
            async with self._http.post(target, data="\n".join(lines).encode()) as answer:
                if answer.status != 204:
                    detail = (await answer.text())[:300]
                    raise InfluxUnavailable(f"InfluxDB answered {answer.status}: {detail}")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise InfluxUnavailable(
                f"InfluxDB at {self.url} cannot be reached: {error!r}"
            ) from None

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._http is not None:
            await self._http.close()
            self._http = None


def query_v1(url: str, database: str, query: str) -> dict[str, Any]:
    """Run InfluxQL on InfluxDB 1.x (``/query``) and return its JSON answer.

    Raises:
        OSError: InfluxDB cannot be reached or answered with an error status.
    """
    parameters = urllib.parse.urlencode({"q": query, "db": database})
    with urllib.request.urlopen(f"{url.rstrip('/')}/query?{parameters}", timeout=30) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result
