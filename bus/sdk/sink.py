"""Where one map's outcomes land, and when its next batch may go (no I/O)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from bus.sdk.protocol import Outcome
from bus.sdk.sizing import BatchSizer

__all__ = ["MapSink"]


class MapSink:
    """Where one map's outcomes land, in arrival order, drained in bulk."""

    def __init__(self) -> None:
        self.arrived: deque[tuple[int, Outcome]] = deque()
        self.wake = asyncio.Event()
        self.submitted = 0
        self.received = 0
        #: Calls per message when the map was given no batch size.
        self.sizer = BatchSizer()
        self._answered = asyncio.Event()

    def put(self, index: int, outcome: Outcome) -> None:
        self.arrived.append((index, outcome))
        self.sizer.observe(outcome.wall_s)
        self.wake.set()
        self._answered.set()

    async def sized(self, window: int) -> None:
        """Before the next batch: until a first outcome tells how long calls run, at most
        ``window`` calls go out (one per message: long ones must not be packed)."""
        if self.submitted >= window and not self._answered.is_set():
            await self._answered.wait()

    async def wait(self, publishing: asyncio.Task[Any]) -> None:
        """Until an outcome arrived or publishing finished; raises what publishing raised.

        Returns at once when all submitted outcomes are in and publishing is done, even
        if nothing new arrives: the last results may come before the last confirms.
        """
        if self.arrived:
            return
        if publishing.done():
            publishing.result()
            if self.received < self.submitted:
                await self.wake.wait()
        else:
            waiter = asyncio.ensure_future(self.wake.wait())
            await asyncio.wait({waiter, publishing}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        self.wake.clear()
