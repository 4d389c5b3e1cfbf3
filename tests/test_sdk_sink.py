"""The map's result sink (pure asyncio, no broker): it never waits for what cannot come."""

from __future__ import annotations

import asyncio

import pytest

from bus.sdk.client import _Sink
from bus.sdk.protocol import Outcome


async def test_wait_returns_when_publishing_ends_after_the_last_result() -> None:
    sink = _Sink()
    sink.submitted = 1
    sink.put(0, Outcome("t.0", True, 1))
    sink.arrived.popleft()
    sink.received = 1
    confirms = asyncio.Event()

    async def publishing_body() -> None:
        await confirms.wait()  # the last confirm comes after the last result

    publishing = asyncio.create_task(publishing_body())
    waiting = asyncio.create_task(sink.wait(publishing))
    await asyncio.sleep(0.01)
    confirms.set()
    await asyncio.wait_for(waiting, timeout=1)


async def test_wait_wakes_on_arrival_and_raises_what_publishing_raised() -> None:
    sink = _Sink()
    sink.submitted = 2
    never = asyncio.create_task(asyncio.Event().wait())
    waiting = asyncio.create_task(sink.wait(never))
    await asyncio.sleep(0.01)
    sink.put(1, Outcome("t.1", True, 2))
    await asyncio.wait_for(waiting, timeout=1)
    assert list(sink.arrived) == [(1, Outcome("t.1", True, 2))]
    never.cancel()

    async def broken() -> None:
        raise TypeError("task arguments and results must be JSON")

    sink.arrived.clear()
    failing = asyncio.create_task(broken())
    with pytest.raises(TypeError, match="must be JSON"):
        await asyncio.wait_for(sink.wait(failing), timeout=1)
