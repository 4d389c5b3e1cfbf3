"""The trivial task the benchmarks run through an idlecloud worker."""

from __future__ import annotations

from bus.sdk import App

app = App(prefetch=200)


@app.task(executor="inline")
def add(x: int, y: int) -> int:
    """The same trivial body as the Celery side's task."""
    return x + y
