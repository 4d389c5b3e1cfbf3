"""Our worker SDK against Celery on the same broker, in the same run.

Starts RabbitMQ with the helper the tests use (a scratch vhost), then times the same
trivial task (``add(x, y)``) through:

- one idlecloud worker (`bus worker`, one process), one message per task, then 100 tasks
  per message (our batched ``map``);
- one Celery worker (solo pool, acks_late, persistent messages, RPC result backend), one
  message per task, then ``chunks(100)``. One message per task is timed in Celery's best
  mode here, one ``delay(...).get()`` after another: sending all tasks first and then
  collecting them is far slower with the RPC backend (measured on this machine: 93 tasks/s
  with 2,000 outstanding, 14/s with 500 and ``join_native``), and a benchmark should beat
  the other side at its best;
- a bare aio-pika request/reply loop with our guarantees (quorum queue, persistent
  messages, publisher confirms on both legs, ack after the reply is confirmed): the
  ceiling for one call at a time.

Then it runs >= 100,000 tasks through our worker and reports its RSS growth between task
1,000 and the last. Celery is a benchmark-only dependency: pip install -e '.[bench]'.

Usage: python bench/tasks_vs_celery.py [--tasks N] [--chunked-tasks M] [--rss-tasks K]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bus.connection import Bus  # noqa: E402
from bus.sdk import App, TaskClient  # noqa: E402
from idlecloud.dev.services import scratch_vhost  # noqa: E402

NAMESPACE, APP = "bench", "add"


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _app() -> App:
    app = App(NAMESPACE, APP, prefetch=200)

    @app.task(executor="inline")
    def add(x: int, y: int) -> int:
        return x + y

    return app


async def _ours(url: str, tasks: int, chunked: int, rss_tasks: int) -> dict[str, float]:
    app = _app()
    add = app.tasks["add"]
    env = {"IDLECLOUD_URL": url, "IDLECLOUD_NAMESPACE": NAMESPACE, "IDLECLOUD_APP": APP}
    worker = _start([sys.executable, "-m", "idlecloud", "worker", "bench.tasks_app:app"], env)
    figures: dict[str, float] = {}
    try:
        async with Bus(url, connection_name="bench client") as bus, TaskClient(bus, app) as client:
            assert await client.call(add, 1, 1) == 2  # warm up; the worker is ready

            async def run(count: int, batch_size: int, watch_rss: bool = False) -> float:
                started = time.perf_counter()
                done = 0
                async for index, value in client.map(
                    add, [(i, i) for i in range(count)], batch_size=batch_size, progress=False
                ):
                    assert value == 2 * index
                    done += 1
                    if watch_rss and done == 1_000:
                        figures["rss_at_1000"] = psutil.Process(worker.pid).memory_info().rss
                assert done == count
                return count / (time.perf_counter() - started)

            figures["single"] = await run(tasks, 1)
            figures["batched"] = await run(chunked, 100)
            await run(rss_tasks, 1, watch_rss=True)
            rss_end = psutil.Process(worker.pid).memory_info().rss
            figures["rss_growth_mib"] = (rss_end - figures["rss_at_1000"]) / 2**20
    finally:
        _stop(worker)
    return figures


def _celery(url: str, tasks: int, chunked: int) -> dict[str, float]:
    queue = f"celery-bench-{uuid.uuid4().hex[:8]}"
    env = {"BENCH_BROKER_URL": url, "BENCH_CELERY_QUEUE": queue}
    os.environ.update(env)
    from bench.celery_app import add

    worker = _start(
        [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--pool=solo",
         "--concurrency=1", "--loglevel=WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        env,
    )  # fmt: skip
    try:
        assert add.delay(1, 1).get(timeout=120) == 2  # warm up; the worker is ready
        started = time.perf_counter()
        for i in range(tasks):
            assert add.delay(i, i).get(timeout=60) == 2 * i
        single = tasks / (time.perf_counter() - started)
        started = time.perf_counter()
        grouped: Any = add.chunks(((i, i) for i in range(chunked)), 100).group().apply_async()
        values = [value for chunk in grouped.get(timeout=600) for value in chunk]
        assert values == [2 * i for i in range(chunked)]
        chunks = chunked / (time.perf_counter() - started)
    finally:
        _stop(worker)
    return {"single": single, "chunks": chunks}


async def _raw_aiopika(url: str, calls: int) -> float:
    """One request at a time: publish (confirmed) -> consume -> reply (confirmed) -> ack."""
    server = await aio_pika.connect(url)
    client = await aio_pika.connect(url)
    try:
        server_channel = await server.channel()
        await server_channel.set_qos(prefetch_count=1)
        requests = await server_channel.declare_queue(
            f"raw-{uuid.uuid4().hex[:8]}", durable=True, arguments={"x-queue-type": "quorum"}
        )

        async def serve(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            reply = aio_pika.Message(
                message.body, correlation_id=message.correlation_id, delivery_mode=2
            )
            assert message.reply_to is not None
            await server_channel.default_exchange.publish(reply, routing_key=message.reply_to)
            await message.ack()

        await requests.consume(serve)
        client_channel = await client.channel()
        replies = await client_channel.declare_queue(exclusive=True)
        waiting: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            waiting.pop(message.correlation_id or "").set_result(message.body)

        await replies.consume(on_reply, no_ack=True)
        started = time.perf_counter()
        for index in range(calls):
            future = asyncio.get_running_loop().create_future()
            waiting[str(index)] = future
            request = aio_pika.Message(
                b'{"args": [1, 1]}', correlation_id=str(index), reply_to=replies.name,
                delivery_mode=2,
            )  # fmt: skip
            await client_channel.default_exchange.publish(request, routing_key=requests.name)
            await future
        return calls / (time.perf_counter() - started)
    finally:
        await client.close()
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3_000, help="one message per task")
    parser.add_argument("--chunked-tasks", type=int, default=100_000, help="100 per message")
    parser.add_argument("--rss-tasks", type=int, default=100_000, help="for the RSS figure")
    parser.add_argument("--raw-calls", type=int, default=2_000, help="bare aio-pika loop")
    arguments = parser.parse_args()
    try:
        import celery  # noqa: F401
    except ImportError:
        sys.exit("this benchmark needs Celery: pip install -e '.[bench]'")
    with scratch_vhost("bench") as broker:
        ours = asyncio.run(
            _ours(broker.url, arguments.tasks, arguments.chunked_tasks, arguments.rss_tasks)
        )
        theirs = _celery(broker.url, arguments.tasks, arguments.chunked_tasks)
        raw = asyncio.run(_raw_aiopika(broker.url, arguments.raw_calls))
    print(f"tasks: {arguments.tasks} one per message, {arguments.chunked_tasks} batched by 100")
    print(f"idlecloud_tasks_per_s: {ours['single']:.0f}")
    print(f"celery_tasks_per_s: {theirs['single']:.0f}")
    print(f"batched_map_tasks_per_s: {ours['batched']:.0f}")
    print(f"celery_chunks_tasks_per_s: {theirs['chunks']:.0f}")
    print(f"raw_aiopika_tasks_per_s: {raw:.0f}")
    print(f"worker_rss_growth_mib: {ours['rss_growth_mib']:.1f}")
    print(f"batched_ratio_vs_celery_chunks: {ours['batched'] / theirs['chunks']:.2f}")
    print(f"ratio_vs_celery: {ours['single'] / theirs['single']:.2f}")


if __name__ == "__main__":
    main()
