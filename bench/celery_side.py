"""One Celery configuration timed in one mode, in a process of its own (bench/tasks_vs_celery.py).

Each run gets a fresh Celery app (its prefetch and publisher confirms are read from the
environment when ``bench.celery_app`` is imported), a fresh queue and its own solo worker,
so no configuration inherits another's connections. Prints one line: ``tasks_per_s: N``.

Usage: python bench/celery_side.py URL MODE COUNT   (MODE: sequential, pipelined, chunks)
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    url, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.environ.update(BENCH_BROKER_URL=url, BENCH_CELERY_QUEUE=f"celery-{uuid.uuid4().hex[:8]}")
    from bench.celery_app import add
    from bench.tasks_vs_celery import start_process, stop_process

    worker = start_process(
        [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--pool=solo",
         "--concurrency=1", "--loglevel=WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        {},
    )  # fmt: skip
    try:
        assert add.delay(1, 1).get(timeout=120) == 2  # warm up; the worker is ready
        started = time.perf_counter()
        if mode == "sequential":  # one call, then its result, then the next
            for i in range(count):
                assert add.delay(i, i).get(timeout=60) == 2 * i
        elif mode == "pipelined":  # every call sent, then every result collected
            results = [add.delay(i, i) for i in range(count)]
            assert [r.get(timeout=600) for r in results] == [2 * i for i in range(count)]
        elif mode == "chunks":  # 100 calls per message
            grouped: Any = add.chunks(((i, i) for i in range(count)), 100).group().apply_async()
            values = [value for chunk in grouped.get(timeout=600) for value in chunk]
            assert values == [2 * i for i in range(count)]
        else:
            sys.exit(f"unknown mode {mode!r}: sequential, pipelined or chunks")
        print(f"tasks_per_s: {count / (time.perf_counter() - started):.1f}")
    finally:
        stop_process(worker)


if __name__ == "__main__":
    main()
