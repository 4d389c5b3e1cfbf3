"""Small helpers for the live tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from bus import names
from bus.connection import Bus
from bus.topology import QueueSpec


async def wait_until(
    predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


class DeadLetterTap:
    """Collects what consumers dead-letter from one queue (bound by the queue's name)."""

    def __init__(self, source_queue: str) -> None:
        self.source_queue = source_queue
        self.messages: list[AbstractIncomingMessage] = []

    async def start(self, bus: Bus) -> DeadLetterTap:
        channel = await bus.channel()
        spec = QueueSpec.private(
            f"idlecloud.test.dead.{id(self):x}",
            (names.DEAD_LETTER_EXCHANGE, self.source_queue),
        )
        queue = await spec.declare(channel)
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(message)

    def reasons(self) -> list[str]:
        return [str((m.headers or {}).get("idlecloud-dead-reason")) for m in self.messages]

    def header(self, index: int, key: str) -> Any:
        return (self.messages[index].headers or {}).get(key)
