"""Writing line protocol to InfluxDB: 1.x over its v1 HTTP API, 2.x/3.x with influxdb-client.

InfluxDB 1.6.7, the one Debian ships, has no ``/api/v2`` (it arrived in 1.8), so
influxdb-client cannot write to it; the v1 endpoint (``/write``) takes the same line
protocol. Both sinks take the lines :mod:`services.metrics.lineprotocol` builds.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

import aiohttp
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.rest import ApiException

from bus.defaults import INFLUX_ORG, INFLUX_TOKEN

__all__ = [
    "InfluxRefused",
    "InfluxUnavailable",
    "InfluxV1",
    "InfluxV2",
    "influx_sink",
    "query_v1",
]


class InfluxUnavailable(Exception):
    """InfluxDB did not take a batch (down, or not serving it now); the message says why."""


class InfluxRefused(Exception):
    """InfluxDB refused some line of a batch as bad data (HTTP 400: unparsable, out of
    range, a field of another type); it wrote the others. The message is InfluxDB's."""


class InfluxV1:
    """One InfluxDB 1.x database, written to in batches of lines (created if missing)."""

    def __init__(self, url: str, database: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None

    async def write(self, lines: list[str]) -> None:
        """Write the lines (nanosecond timestamps).

        Raises:
            InfluxRefused: InfluxDB refused a line as bad data (the rest were written).
            InfluxUnavailable: InfluxDB cannot be reached or did not take the batch.
        """
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        target = f"{self.url}/write?db={self.database}&precision=ns"
        try:
            async with self._http.post(target, data="\n".join(lines).encode()) as answer:
                if answer.status != 204:
                    detail = (await answer.text())[:300]
                    if answer.status == 404 and "database not found" in detail:
                        await self._create_database()
                        raise InfluxUnavailable(f"created database {self.database}; writing again")
                    failure = InfluxRefused if answer.status == 400 else InfluxUnavailable
                    raise failure(f"InfluxDB answered {answer.status}: {detail}")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise InfluxUnavailable(
                f"InfluxDB at {self.url} cannot be reached: {error!r}"
            ) from None

    async def _create_database(self) -> None:
        """Create the database the writes go to (idempotent in InfluxDB 1.x)."""
        assert self._http is not None
        query = {"q": f'CREATE DATABASE "{self.database}"'}
        async with self._http.post(f"{self.url}/query", data=query) as answer:
            if answer.status != 200:
                detail = (await answer.text())[:300]
                raise InfluxUnavailable(f"cannot create database {self.database}: {detail}")

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._http is not None:
            await self._http.close()
            self._http = None


class InfluxV2:
    """One bucket of InfluxDB 2.x or 3.x, written through influxdb-client (``/api/v2``)."""

    def __init__(self, url: str, token: str, org: str, bucket: str) -> None:
        self.url = url
        self.bucket = bucket
        self._settings = {"url": url, "token": token, "org": org}
        self._client: InfluxDBClientAsync | None = None

    async def write(self, lines: list[str]) -> None:
        """Write the lines (nanosecond timestamps).

        Raises:
            InfluxRefused: InfluxDB refused a line as bad data.
            InfluxUnavailable: InfluxDB cannot be reached or did not take the batch.
        """
        if self._client is None:
            self._client = InfluxDBClientAsync(**self._settings)
        try:
            await self._client.write_api().write(bucket=self.bucket, record=lines)
        except ApiException as error:
            failure = InfluxRefused if error.status == 400 else InfluxUnavailable
            raise failure(f"InfluxDB at {self.url} did not take the batch: {error}"[:500]) from None
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = f"InfluxDB at {self.url} did not take the batch: {error}"
            raise InfluxUnavailable(reason[:500]) from None

    async def close(self) -> None:
        """Close the client."""
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]
            self._client = None


def influx_sink(
    api: str, url: str, database: str, *, token: str = INFLUX_TOKEN, org: str = INFLUX_ORG
) -> InfluxV1 | InfluxV2:
    """The sink that speaks ``api`` to the InfluxDB at ``url``.

    Args:
        api: ``v1`` (``/write``: every 1.x, Debian's 1.6.7 too; the database is created if
            missing) or ``v2`` (influxdb-client's ``/api/v2/write``: InfluxDB 1.8 and later,
            2.x and 3.x; ``database`` is the bucket).
        url: InfluxDB's base URL.
        database: the database (``v1``) or bucket (``v2``).
        token: for ``v2``: InfluxDB 1.8 takes ``user:password`` (``:`` without
            authentication), 2.x an API token.
        org: for ``v2``: the organisation (``-`` for 1.8).

    Raises:
        ValueError: ``api`` is neither.
    """
    if api == "v1":
        return InfluxV1(url, database)
    if api == "v2":
        return InfluxV2(url, token=token, org=org, bucket=database)
    raise ValueError(f"InfluxDB API {api!r}: use v1 (/write) or v2 (influxdb-client)")


def query_v1(
    url: str, database: str, query: str, *, change: bool = False, token: str | None = None
) -> dict[str, Any]:
    """Run InfluxQL on InfluxDB's v1 query API (``/query``: every 1.x; 2.x with a database
    mapped to the bucket) and return its JSON answer.

    Args:
        url: InfluxDB's base URL.
        database: the database the query reads ("" for none, as CREATE DATABASE needs).
        query: the InfluxQL.
        change: the query changes something (CREATE, DROP): 1.x takes those only by POST.
        token: sent as ``Authorization: Token …`` (2.x; 1.8 takes ``user:password``).

    Raises:
        OSError: InfluxDB cannot be reached or answered with an error status
            (:class:`urllib.error.HTTPError`, whose body says why).
    """
    parameters = urllib.parse.urlencode({"q": query, **({"db": database} if database else {})})
    endpoint = f"{url.rstrip('/')}/query"
    headers = {"Authorization": f"Token {token}"} if token else {}
    if change:
        request = urllib.request.Request(endpoint, data=parameters.encode(), headers=headers)
    else:
        request = urllib.request.Request(f"{endpoint}?{parameters}", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result
