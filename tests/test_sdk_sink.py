"""The map's result sink (pure asyncio, no broker): it never waits for what cannot come."""

from __future__ import annotations

import asyncio

import pytest

from bus.sdk.protocol import Outcome
from bus.sdk.sink import MapSink


async def test_wait_returns_when_publishing_ends_after_the_last_result() -> None:
    sink = MapSink()
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
    sink = MapSink()
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


async def test_until_a_first_outcome_reports_at_most_a_window_of_calls_goes_out() -> None:
    """A default map sends one call per message and no more than its window before a
    worker says how long calls run; the first outcome frees it and sizes the batches."""
    sink = MapSink()
    sink.submitted = 3
    await asyncio.wait_for(sink.sized(4), timeout=1)  # under the window: at once
    sink.submitted = 4
    waiting = asyncio.create_task(sink.sized(4))
    await asyncio.sleep(0.01)
    assert not waiting.done() and sink.sizer.size == 1
    sink.put(0, Outcome("t.0", True, 0, wall_s=1e-5))
    await asyncio.wait_for(waiting, timeout=1)
    assert sink.sizer.size == 100
