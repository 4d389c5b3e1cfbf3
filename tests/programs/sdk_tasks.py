"""The tasks of the SDK tests' app, registered on a fresh App by :func:`make_app`."""

from __future__ import annotations

import asyncio
import time

from bus.sdk import App


def make_app(namespace: str | None = None, app_id: str | None = None) -> App:
    """The test app's tasks, registered on a new App."""
    app = App(namespace, app_id, prefetch=50)

    @app.task
    def square(x: int) -> int:
        return x * x

    @app.task
    async def add(x: float, y: float, *, scale: float = 1.0) -> float:
        await asyncio.sleep(0)
        return (x + y) * scale

    @app.task(executor="inline")
    def reverse(data: bytes) -> bytes:
        return data[::-1]

    @app.task(executor="inline")
    def tile(n: int) -> bytes:
        return bytes([n % 256]) * 3

    @app.task(retries=2)
    def poison(x: int) -> int:
        raise ValueError(f"poisoned input {x}")

    @app.task(timeout_s=0.5)
    def slow(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(executor="thread")
    def nap(seconds: float) -> float:
        time.sleep(seconds)  # one at a time per worker (its concurrency): work that takes time
        return seconds

    @app.task(executor="inline")
    def not_json() -> object:
        return object()

    return app
