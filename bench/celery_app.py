"""The Celery side of bench/tasks_vs_celery.py: the same trivial task, Celery's way.

Solo pool, late acks, persistent messages into a durable classic queue, RPC result
backend, JSON. ``BENCH_CELERY_PREFETCH`` sets the worker's prefetch (its multiplier, with
one solo process); ``BENCH_CELERY_CONFIRM=1`` publishes with confirms (``confirm_publish``:
off by default in Celery).
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "bench_celery",
    broker=os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend="rpc://",
)
app.conf.update(
    task_acks_late=True,
    task_default_delivery_mode="persistent",
    result_persistent=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=os.environ.get("BENCH_CELERY_QUEUE", "celery"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "4")),
    broker_transport_options={"confirm_publish": os.environ.get("BENCH_CELERY_CONFIRM") == "1"},
)


@app.task
def add(x: int, y: int) -> int:
    """The same trivial body as the idlecloud side's task."""
    return x + y
