"""What a durable job costs against a live ``map`` of the same calls, on the local broker.

Starts RabbitMQ with the same helper the tests use (idlecloud.dev.services) in a scratch
vhost, the jobs service and two in-process workers (an inline ``square``), then measures,
for N calls in batches of B (both modes alike: persistent messages, publisher confirms,
256 messages in flight):

- ``map``: a live ``TaskClient.map``, results to the client's own queue, end to end;
- ``job``: ``submit_job``, then ``wait`` until the jobs service has every result, then one
  reader reads them all from the job's stream, end to end; and its parts;
- two readers reading the same finished job at once;
- cancel: a job's N calls cancelled before any worker runs; how fast workers drop them.

Usage: python bench/jobs.py [--calls N] [--batch B]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bus.connection import Bus
from bus.sdk import App, Job, TaskClient, Worker
from bus.topology import declare_namespace, declare_platform
from idlecloud.dev.services import scratch_vhost
from services.jobs.service import JobsService

NAMESPACE = "bench"


def _app() -> App:
    app = App(NAMESPACE, "jobs", prefetch=200)

    @app.task(executor="inline")
    def square(x: int) -> int:
        return x * x

    return app


async def _read(job: Job, count: int) -> float:
    started = time.perf_counter()
    seen = 0
    async for _index, _outcome in job.results():
        seen += 1
    assert seen == count, (seen, count)
    return time.perf_counter() - started


async def main(url: str, calls: int, batch: int) -> None:
    app = _app()
    square = app.tasks["square"]
    async with Bus(url, connection_name="bench jobs") as bus:
        await declare_platform(bus)
        channel = await bus.channel()
        await declare_namespace(channel, NAMESPACE)
        await channel.close()
        service = JobsService(retry_s=0.2)
        await service.start(bus)
        for _ in range(200):
            if service.leadership.leading:
                break
            await asyncio.sleep(0.05)
        workers = [Worker(app, concurrency=1) for _ in range(2)]
        async with TaskClient(bus, app) as client:
            for worker in workers:
                await worker.start(bus)
            started = time.perf_counter()
            got = [i async for i, _ in client.map(square, range(calls), batch_size=batch)]
            map_s = time.perf_counter() - started
            assert len(got) == calls

            started = time.perf_counter()
            job = await client.submit_job(square, range(calls), batch_size=batch, progress=False)
            submit_s = time.perf_counter() - started
            await job.wait(poll_s=0.05)
            done_s = time.perf_counter() - started
            read_s = await _read(job, calls)
            job_s = time.perf_counter() - started

            pair = await asyncio.gather(_read(job, calls), _read(job, calls))

            for worker in workers:
                await worker.stop(2.0)
            cancelled = await client.submit_job(
                square, range(calls), batch_size=batch, progress=False
            )
            await cancelled.cancel()
            workers = [Worker(app, concurrency=1) for _ in range(2)]
            started = time.perf_counter()
            for worker in workers:
                await worker.start(bus)
            wanted = -(-calls // batch)  # messages, each skipped whole
            for _ in range(100_000):  # 1,000 s at most
                if sum(worker.skipped for worker in workers) >= wanted:
                    break
                await asyncio.sleep(0.01)
            drop_s = time.perf_counter() - started
            for worker in workers:
                await worker.stop(2.0)
        await service.stop(1.0)
    print(f"calls: {calls}, batch: {batch}, workers: 2 in-process (inline square)")
    print(f"map_end_to_end_calls_per_s: {calls / map_s:,.0f}")
    print(f"job_end_to_end_calls_per_s: {calls / job_s:,.0f}")
    print(f"job_over_map_time_ratio: {job_s / map_s:.2f}")
    print(f"job_submit_calls_per_s: {calls / submit_s:,.0f}")
    print(f"job_done_after_s: {done_s:.2f} (the jobs service counted every result)")
    print(f"job_read_results_per_s: {calls / read_s:,.0f} (one reader, whole stream)")
    print(f"job_two_readers_results_per_s_each: {calls / max(pair):,.0f}")
    print(f"cancelled_calls_dropped_per_s: {calls / drop_s:,.0f} (workers started after "
          "the cancel, including their start)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1)
    arguments = parser.parse_args()
    with scratch_vhost("bench-jobs") as broker:
        asyncio.run(main(broker.url, arguments.calls, arguments.batch))
