"""Reading a namespace's replicas' output from its log stream.

The platform appends each replica's output, in batches, to ``idlecloud.ns.<ns>.logs``
(:mod:`services.placement.logs`); the namespace's keys (and admins') may read it. A reader
starts at a time (the stream's chunks carry when they were written) and keeps the lines
of one app or replica. It has read what was stored when it meets a line printed after it
began (PCs' clocks are kept by NTP), or when the stream stays quiet for ``quiet_s``; then
it stops, or, when it follows, goes on until it is cancelled.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import aiormq
from aio_pika.abc import AbstractIncomingMessage

from bus.codec import decode, delivery_of
from bus.connection import Bus
from bus.errors import InvalidMessage
from bus.streams import StreamTail
from bus.topology import log_stream_spec
from schemas import LogBatch, LogLine, utc_now

__all__ = ["SPAN_PATTERN", "parse_span", "read_logs"]

#: A follower whose namespace has no log stream yet looks again this often.
_RETRY_S = 0.2
#: How far back to read: ``30s``, ``10m``, ``2h``, ``7d``.
SPAN_PATTERN = r"^[0-9]{1,6}[smhd]$"
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_span(text: str) -> timedelta:
    """``30s``, ``10m``, ``2h`` or ``7d`` as a duration.

    Raises:
        ValueError: anything else, saying what is expected.
    """
    if not re.fullmatch(SPAN_PATTERN, text):
        raise ValueError(f"{text[:32]!r} is not a span such as 30s, 10m, 2h or 7d")
    return timedelta(seconds=int(text[:-1]) * _UNIT_S[text[-1]])


async def read_logs(
    bus: Bus,
    namespace: str,
    *,
    since: datetime,
    app: str | None = None,
    replica: str | None = None,
    follow: bool = False,
    quiet_s: float = 0.5,
) -> AsyncIterator[tuple[LogBatch, LogLine] | None]:
    """Each line (with the batch it came in) printed since ``since``; ``None`` once, when
    what was stored is read (the stream went quiet for ``quiet_s``).

    Args:
        bus: a connection whose credential may read the namespace's logs.
        namespace: whose logs.
        since: from when (the stream starts at the chunk written then).
        app: only this app's replicas.
        replica: only this replica.
        follow: go on after what was stored, until cancelled.
        quiet_s: how long a quiet stream means everything stored was read.

    Raises:
        aiormq.exceptions.ChannelAccessRefused: the credential may not read these logs.
    """
    batches: deque[LogBatch] = deque()
    wake = asyncio.Event()
    began = utc_now()
    newer = False  # a batch printed after this read began was met

    def take(_offset: int, incoming: AbstractIncomingMessage) -> None:
        nonlocal newer
        try:
            batch = decode(delivery_of(incoming), {LogBatch.schema_name: LogBatch},
                           check_route=False)  # fmt: skip
        except InvalidMessage:
            return
        assert isinstance(batch, LogBatch)
        newer = newer or batch.lines[-1].at > began
        if (app is None or batch.app == app) and (replica is None or batch.replica_id == replica):
            batches.append(batch)
        wake.set()

    tail = StreamTail(log_stream_spec(namespace), take, start=since)
    channel = None
    caught_up = False
    try:
        while channel is None:
            opened = await bus.channel(prefetch=500)
            try:
                await tail.start(opened)
                channel = opened
            except aiormq.exceptions.ChannelNotFoundEntity:  # no replica has printed yet
                if not follow:
                    yield None
                    return
                if not caught_up:
                    caught_up = True
                    yield None
                await asyncio.sleep(_RETRY_S)
        while True:
            while batches:
                batch = batches.popleft()
                for line in batch.lines:
                    if line.at >= since and (follow or line.at <= began):
                        yield batch, line
            quiet = False
            if not newer:
                try:
                    await asyncio.wait_for(wake.wait(), quiet_s)
                    wake.clear()
                except TimeoutError:
                    quiet = True
            if (newer or quiet) and not caught_up:
                caught_up = True
                yield None
            if caught_up and not follow:
                return
            if newer and follow:
                await wake.wait()
                wake.clear()
    finally:
        await tail.stop()
        if channel is not None and not channel.is_closed:
            await channel.close()
