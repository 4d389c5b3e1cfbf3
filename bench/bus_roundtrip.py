"""Throughput of the bus library's building blocks on the local broker.

Starts RabbitMQ with the same helper the tests use (idlecloud.dev.services) in a scratch vhost,
then measures, with persistent messages and publisher confirms throughout:

- confirmed publishes one at a time (each awaits its confirm before the next),
- confirmed publishes 100 in flight at a time,
- typed consumption (validate, handle, ack) from a quorum queue,
- sequential RPC calls (request and reply both confirmed) through a quorum queue.

Usage: python bench/bus_roundtrip.py [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from bus import names
from bus.codec import Delivery
from bus.connection import Bus
from bus.consumer import Consumer
from bus.rpc import RpcClient, RpcServer
from bus.topology import QueueSpec, declare_namespace, declare_platform
from idlecloud.dev.services import scratch_vhost
from schemas import Owner, RequestResult, ScaleRequest

NAMESPACE = "bench"


def _request(index: int) -> ScaleRequest:
    return ScaleRequest(request_id=f"req-{index:08d}", namespace=NAMESPACE, app="a", replicas=1)


async def _timed(count: int, action: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await action()
    return count / (time.perf_counter() - started)


async def main(url: str, count: int) -> None:
    async with Bus(url, connection_name="bench") as bus:
        await declare_platform(bus)
        channel = await bus.channel()
        await declare_namespace(channel, "bench")
        sink = QueueSpec.quorum(
            "idlecloud.bench.sink", (names.REQUESTS_EXCHANGE, "ns.bench.scale.*")
        )
        await sink.declare(channel)

        async def one_at_a_time() -> None:
            for index in range(count):
                await bus.publish(_request(index))

        async def hundred_in_flight() -> None:
            for start in range(0, count, 100):
                await asyncio.gather(*(bus.publish(_request(i)) for i in range(start, start + 100)))

        sequential = await _timed(count, one_at_a_time)
        pipelined = await _timed(count, hundred_in_flight)

        done = asyncio.Event()
        seen = 0

        async def handle(_message: ScaleRequest, _delivery: Delivery) -> None:
            nonlocal seen
            seen += 1
            if seen == 2 * count:
                done.set()

        consumer = Consumer(sink, [ScaleRequest], handle, prefetch=100)
        consumed = await _timed(2 * count, lambda: _consume(consumer, bus, done))
        await consumer.stop()

        async def answer(request: ScaleRequest, _delivery: Delivery) -> RequestResult:
            return RequestResult(request_id=request.request_id, namespace=NAMESPACE, accepted=True)

        server = RpcServer(
            QueueSpec.quorum("idlecloud.bench.rpc", (names.REQUESTS_EXCHANGE, "ns.bench.scale.*")),
            [ScaleRequest],
            answer,
        )
        await channel.queue_delete(sink.name)
        await server.start(bus)
        client = await RpcClient(bus, Owner.namespace(NAMESPACE)).start()
        rpc_count = max(count // 5, 50)

        async def calls() -> None:
            for index in range(rpc_count):
                await client.call(_request(index), RequestResult)

        rpc = await _timed(rpc_count, calls)
        await client.stop()
        await server.stop()

    print(f"messages: {count}")
    print(f"publish_confirmed_sequential_per_s: {sequential:.0f}")
    print(f"publish_confirmed_100_in_flight_per_s: {pipelined:.0f}")
    print(f"consume_validate_ack_per_s: {consumed:.0f}")
    print(f"rpc_sequential_calls_per_s: {rpc:.0f}")
    print(f"pipelining_gain: {pipelined / sequential:.1f}")


async def _consume(consumer: Consumer[ScaleRequest], bus: Bus, done: asyncio.Event) -> None:
    await consumer.start(bus)
    await asyncio.wait_for(done.wait(), timeout=300)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per measurement")
    arguments = parser.parse_args()
    with scratch_vhost("bench") as broker:
        asyncio.run(main(broker.url, arguments.messages))
