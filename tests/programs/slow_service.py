"""A real service process for the SIGTERM tests: answers each deploy request after a delay.

Usage: python -m tests.programs.slow_service URL QUEUE NAMESPACE DELAY_S GRACE_S
"""

from __future__ import annotations

import asyncio
import sys

from bus import names
from bus.codec import Delivery
from bus.connection import Bus
from bus.consumer import Consumer
from bus.service import run
from bus.topology import QueueSpec, declare_namespace
from schemas import DeployRequest, RequestResult


class SlowAnswerer:
    """Accepts every deploy request after ``delay_s``, printing when it starts and ends."""

    name = "slow-answerer"

    def __init__(self, queue: str, namespace: str, delay_s: float) -> None:
        self.delay_s = delay_s
        self.namespace = namespace
        spec = QueueSpec.quorum(queue, (names.REQUESTS_EXCHANGE, f"ns.{namespace}.deploy.*"))
        self.consumer = Consumer(spec, [DeployRequest], self.handle, prefetch=5)

    async def start(self, bus: Bus) -> None:
        channel = await bus.channel()
        await declare_namespace(channel, self.namespace)
        await channel.close()
        await self.consumer.start(bus)

    async def stop(self, grace_s: float) -> None:
        await self.consumer.stop(grace_s)

    async def handle(self, message: DeployRequest, _delivery: Delivery) -> None:
        print(f"handling {message.request_id}", flush=True)
        await asyncio.sleep(self.delay_s)
        result = RequestResult(
            request_id=message.request_id, namespace=message.namespace, accepted=True
        )
        await self.consumer.bus.publish(result)
        print(f"done {message.request_id}", flush=True)


if __name__ == "__main__":
    url, queue, namespace, delay_s, grace_s = sys.argv[1:]
    run(url, [SlowAnswerer(queue, namespace, float(delay_s))], grace_s=float(grace_s))
