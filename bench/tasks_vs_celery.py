"""Our worker SDK against Celery on the same broker, in the same run, mode for mode.

Starts RabbitMQ with the helper the tests use (a scratch vhost), then times the same
trivial task (``add(x, y)``) in each mode on both sides:

- **sequential**: one call, its result, then the next (``await client.call`` against
  ``delay().get()``), and ``add.delay(x, y).get()`` on both sides (``sequential_blocking``:
  our blocking API, which runs its client on a background uvloop);
- **pipelined**, one message per task: every call in flight at once
  (``map(batch_size=1)``, against every ``delay()`` first and every ``get()`` after);
- **batched**, 100 calls per message (``map(batch_size=100)`` against ``chunks(100)``);
- **default map**, what a researcher writes untuned: ``map`` without a batch size, which
  packs calls by the run times results report (:mod:`bus.sdk.sizing`), set against
  Celery's untuned pipelined mode over the same 3,000 tasks, and against ``chunks(100)``
  (the size our sizer reaches with a trivial task) over the same 100,000.

Our side is one ``bus worker`` process (on uvloop, as it ships); our async client runs on
uvloop too (``uvloop.run``), as a researcher's asyncio script may choose. Celery is one
solo worker with ``acks_late``, persistent messages into a durable classic queue and the
RPC result backend, run once per
configuration in a process of its own (``bench/celery_side.py``): its prefetch swept
(``--celery-prefetch``, default 4, 64 and 256) with publisher confirms off (Celery's
default) and on (``confirm_publish``). Every configuration's figure is printed, and each
mode's ratio against Celery's best configuration, and against its best with confirms.
A bare aio-pika request/reply loop with our guarantees is the ceiling for one call at a
time. Then >= 100,000 tasks go through our worker for its RSS growth between task 1,000
and the last. Celery is a benchmark-only dependency: pip install -e '.[bench]'.

Usage: python bench/tasks_vs_celery.py [--sequential-calls N] [--tasks N]
       [--chunked-tasks M] [--rss-tasks K] [--celery-prefetch 4,64,256]
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

import aio_pika
import psutil
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bus.connection import Bus  # noqa: E402
from bus.sdk import App, TaskClient  # noqa: E402
from idlecloud.dev.services import scratch_vhost  # noqa: E402

NAMESPACE, APP = "bench", "add"


def start_process(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A worker process in the project's folder, with ``env`` added to ours."""
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _app(url: str | None = None) -> App:
    app = App(NAMESPACE, APP, prefetch=200, url=url)

    @app.task(executor="inline")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def _worker(url: str) -> subprocess.Popen[bytes]:
    """``bus worker`` serving the bench's app, as its own process."""
    env = {"IDLECLOUD_URL": url, "IDLECLOUD_NAMESPACE": NAMESPACE, "IDLECLOUD_APP": APP}
    return start_process([sys.executable, "-m", "idlecloud", "worker", "bench.tasks_app:app"], env)


def _ours_blocking(url: str, calls: int) -> float:
    """One call at a time from plain code, ``add.delay(x, y).get()``, as Celery's is called."""
    app = _app(url)
    add = app.tasks["add"]
    worker = _worker(url)
    try:
        assert add.delay(1, 1).get(timeout=60) == 2  # warm up; the worker is ready
        started = time.perf_counter()
        for i in range(calls):
            assert add.delay(i, i).get(timeout=30) == 2 * i
        return calls / (time.perf_counter() - started)
    finally:
        app.sync_client().close()
        stop_process(worker)


async def _ours(
    url: str, sequential: int, tasks: int, chunked: int, rss_tasks: int
) -> dict[str, float]:
    app = _app()
    add = app.tasks["add"]
    worker = _worker(url)
    figures: dict[str, float] = {}
    try:
        async with Bus(url, connection_name="bench client") as bus, TaskClient(bus, app) as client:
            assert await client.call(add, 1, 1) == 2  # warm up; the worker is ready

            async def run(count: int, batch_size: int | None, watch_rss: bool = False) -> float:
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

            started = time.perf_counter()
            for i in range(sequential):
                assert await client.call(add, i, i) == 2 * i
            figures["sequential"] = sequential / (time.perf_counter() - started)
            figures["pipelined"] = await run(tasks, 1)
            figures["batched"] = await run(chunked, 100)
            sent = client.messages_sent
            figures["default_map"] = await run(tasks, None)
            figures["default_map_large"] = await run(chunked, None)
            figures["default_calls_per_message"] = (tasks + chunked) / (client.messages_sent - sent)
            await run(rss_tasks, 1, watch_rss=True)
            rss_end = psutil.Process(worker.pid).memory_info().rss
            figures["rss_growth_mib"] = (rss_end - figures["rss_at_1000"]) / 2**20
    finally:
        stop_process(worker)
    return figures


def _celery(url: str, mode: str, count: int, prefetch: int, confirm: bool) -> float:
    """Celery's tasks/s in ``mode`` with one configuration, in a process of its own."""
    env = {**os.environ, "BENCH_CELERY_PREFETCH": str(prefetch),
           "BENCH_CELERY_CONFIRM": "1" if confirm else "0"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "celery_side.py"), url, mode, str(count)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"celery {mode} (prefetch {prefetch}, confirms {confirm}) failed: "
                           f"{done.stderr[-2000:]}")  # fmt: skip
    return float(done.stdout.split("tasks_per_s:")[1].split()[0])


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


#: Each comparison: our figure's key, Celery's mode, and the argument giving the task count.
_MODES = (("sequential", "sequential", "sequential_calls"),
          ("sequential_blocking", "sequential", "sequential_calls"),
          ("pipelined", "pipelined", "tasks"),
          ("batched", "chunks", "chunked_tasks"), ("default_map", "pipelined", "tasks"),
          ("default_map_large", "chunks", "chunked_tasks"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential-calls", type=int, default=1_500, help="one at a time")
    parser.add_argument("--tasks", type=int, default=3_000, help="pipelined, one per message")
    parser.add_argument("--chunked-tasks", type=int, default=100_000, help="100 per message")
    parser.add_argument("--rss-tasks", type=int, default=100_000, help="for the RSS figure")
    parser.add_argument("--raw-calls", type=int, default=2_000, help="bare aio-pika loop")
    parser.add_argument("--celery-prefetch", default="4,64,256", help="Celery prefetch sweep")
    arguments = parser.parse_args()
    try:
        import celery  # noqa: F401
    except ImportError:
        sys.exit("this benchmark needs Celery: pip install -e '.[bench]'")
    prefetches = [int(value) for value in arguments.celery_prefetch.split(",")]
    with scratch_vhost("bench") as broker:
        ours = uvloop.run(_ours(broker.url, arguments.sequential_calls, arguments.tasks,
                                arguments.chunked_tasks, arguments.rss_tasks))  # fmt: skip
        ours["sequential_blocking"] = _ours_blocking(broker.url, arguments.sequential_calls)
        theirs = {
            (celery_mode, prefetch, confirm): _celery(
                broker.url, celery_mode, getattr(arguments, count), prefetch, confirm
            )
            for celery_mode, count in dict.fromkeys((m, c) for _o, m, c in _MODES)
            for prefetch in prefetches
            for confirm in (False, True)
        }
        raw = uvloop.run(_raw_aiopika(broker.url, arguments.raw_calls))
    print("durability_idlecloud: quorum task queue, persistent messages, publisher confirms "
          "on calls and results, a task acked only once its result is confirmed (acks of "
          "answered tasks held up to 50 ms to go together)")  # fmt: skip
    print("durability_celery: durable classic queue, persistent messages, acks_late, RPC "
          "results; publisher confirms off (its default) and on (confirm_publish)")  # fmt: skip
    print(f"tasks: sequential {arguments.sequential_calls}, pipelined {arguments.tasks}, "
          f"batched {arguments.chunked_tasks} by 100")  # fmt: skip
    print(f"default_map_calls_per_message: {ours['default_calls_per_message']:.1f}")
    for mode, celery_mode, _count in _MODES:
        print(f"{mode}_idlecloud_tasks_per_s: {ours[mode]:.0f}")
        for (seen, prefetch, confirm), rate in theirs.items():
            if seen == celery_mode:
                print(f"{mode}_celery_{celery_mode}_prefetch_{prefetch}_confirms_"
                      f"{'on' if confirm else 'off'}_tasks_per_s: {rate:.0f}")  # fmt: skip
        for label, allowed in (("best", (False, True)), ("confirmed_best", (True,))):
            (_m, prefetch, confirm), rate = max(
                ((key, rate) for key, rate in theirs.items()
                 if key[0] == celery_mode and key[2] in allowed), key=lambda pair: pair[1],
            )  # fmt: skip
            print(f"{mode}_ratio_vs_celery_{label}: {ours[mode] / rate:.2f} (Celery "
                  f"{celery_mode}, prefetch {prefetch}, confirms "
                  f"{'on' if confirm else 'off'}: {rate:.0f}/s)")  # fmt: skip
    print(f"raw_aiopika_sequential_tasks_per_s: {raw:.0f}")
    print(f"worker_rss_growth_mib: {ours['rss_growth_mib']:.1f}")


if __name__ == "__main__":
    main()
