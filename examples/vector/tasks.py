"""The thesis's vector-add example (its Figures 23-26), ported to the idlecloud SDK.

Run a worker:   bus worker examples.vector.tasks:app
Submit work:    python -m examples.vector.client
"""

from __future__ import annotations

from bus.sdk import App

app = App("demo", "vector")


@app.task
def add(x: list[float], y: list[float]) -> list[float]:
    """Add two vectors element by element (runs in the worker's process pool)."""
    if len(x) != len(y):
        raise ValueError(f"vectors differ in length: {len(x)} != {len(y)}")
    return [a + b for a, b in zip(x, y, strict=True)]
