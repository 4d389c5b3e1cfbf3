"""The SDK from plain (non-async) code: ``task.delay(...).get()`` and ``task.map(...)``.

A :class:`SyncClient` runs an event loop in a daemon thread, with one connection and one
:class:`~bus.sdk.client.TaskClient`, created on first use from the app's URL (or
``IDLECLOUD_URL``, or the local broker).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import uvloop

from bus.connection import Bus
from bus.sdk.client import TaskClient, connect_app

if TYPE_CHECKING:
    from bus.abc import AppAddress, TaskAddress

__all__ = ["SyncClient", "SyncResult"]


class SyncResult:
    """A submitted call; :meth:`get` blocks until its value arrives."""

    def __init__(self, future: concurrent.futures.Future[Any]) -> None:
        self._future = future

    def get(self, timeout: float | None = None) -> Any:
        """The call's value.

        Raises:
            TaskFailed: the call failed on every attempt.
            TimeoutError: no result within ``timeout`` seconds.
        """
        return self._future.result(timeout)

    def ready(self) -> bool:
        """True once the result (or failure) arrived."""
        return self._future.done()


class SyncClient:
    """A task client on a background event loop, for scripts."""

    def __init__(self, app: AppAddress) -> None:
        self._app = app
        self._loop = uvloop.new_event_loop()  # as `bus worker`'s: less CPU per message
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._bus: Bus | None = None
        self._client = self._run(self._connect())
        atexit.register(self.close)

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _connect(self) -> TaskClient:
        self._bus = await connect_app(self._app, f"client {self._app.app}")
        return await TaskClient(self._bus, self._app).start()

    def submit(
        self, task: TaskAddress, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> SyncResult:
        """Publish one call and return at once."""

        async def submit_and_wait() -> Any:
            return await (await self._client.submit(task, *args, **kwargs))

        return SyncResult(asyncio.run_coroutine_threadsafe(submit_and_wait(), self._loop))

    def map(
        self, task: TaskAddress, inputs: Iterable[Any], *, batch_size: int | None
    ) -> Iterator[Any]:
        """Yield the task's values for ``inputs``, in input order."""
        arrived: queue.Queue[tuple[int, Any] | BaseException | None] = queue.Queue()

        async def collect() -> None:
            try:
                async for item in self._client.map(task, inputs, batch_size=batch_size):
                    arrived.put(item)
            except BaseException as error:
                arrived.put(error)
                raise
            arrived.put(None)

        running = asyncio.run_coroutine_threadsafe(collect(), self._loop)
        waiting: dict[int, Any] = {}
        following = 0
        try:
            while (item := arrived.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                waiting[item[0]] = item[1]
                while following in waiting:
                    yield waiting.pop(following)
                    following += 1
        finally:
            running.cancel()

    def close(self) -> None:
        """Close the connection and stop the loop thread."""
        if not self._loop.is_running():
            return

        async def shutdown() -> None:
            await self._client.stop()
            if self._bus is not None:
                await self._bus.close()

        self._run(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
