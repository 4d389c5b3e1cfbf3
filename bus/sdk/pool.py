"""A pool of worker processes for CPU-bound sync tasks, each killable on its own.

The worker's event loop must keep answering AMQP heartbeats while a task computes, so sync
tasks run in child processes. Unlike ``concurrent.futures``, this pool can kill one child
(a task over its timeout) and notices when one dies (``kill -9``, out of memory): the child
is replaced and the caller is told which, so the call can be retried.

Children are spawned (not forked) and import the app from its ``module:attribute`` target.
They ignore SIGINT/SIGTERM (the parent decides when they stop) and exit when the parent's
end of their pipe closes, so a killed parent leaves no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import multiprocessing
import signal
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from bus.sdk.checkpoints import Resume, Saved, Sink, with_context
from bus.sdk.protocol import Call, Outcome, run_sync

__all__ = ["ChildDied", "ProcessPool", "load_target"]

_CONTEXT = multiprocessing.get_context("spawn")
#: What a child sends its worker: a checkpoint one of its calls saved, or their outcomes.
_CHECKPOINT, _DONE = "checkpoint", "done"


class ChildDied(Exception):
    """The process running a call died (killed, or out of memory) before answering."""


def load_target(target: str) -> Any:
    """Import ``module:attribute`` (attribute may be dotted).

    Raises:
        ValueError: the target is not of that form.
        ImportError, AttributeError: it does not exist.
    """
    module_name, colon, attribute = target.partition(":")
    if not (module_name and colon and attribute):
        raise ValueError(f"expected MODULE:ATTRIBUTE, got {target!r}")
    found: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


def _child_main(connection: Connection, target: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    app = load_target(target)

    def sink(task_id: str, saved: Saved) -> None:  # to the worker, which stores it
        connection.send((_CHECKPOINT, task_id, saved))

    while True:
        try:
            task_name, calls, resumes = connection.recv()
        except (EOFError, OSError):
            return
        function = app.tasks[task_name].function
        results = [run_sync(function, with_context(call, resume, sink), time.process_time)
                   for call, resume in zip(calls, resumes, strict=True)]  # fmt: skip
        try:
            connection.send((_DONE, results))
        except OSError:  # BrokenPipeError: the worker is gone, and this process goes quietly
            return


class _Child:
    def __init__(self, target: str) -> None:
        self.connection, child_end = _CONTEXT.Pipe(duplex=True)
        self.process: BaseProcess = _CONTEXT.Process(
            target=_child_main, args=(child_end, target), daemon=True
        )
        self.process.start()
        child_end.close()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()


class ProcessPool:
    """``size`` spawned processes, each running one batch of calls at a time."""

    def __init__(self, target: str, size: int) -> None:
        if size < 1:
            raise ValueError("a process pool needs at least one process")
        self._target = target
        self._size = size
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._children: set[_Child] = set()

    @property
    def pids(self) -> list[int]:
        """The process ids of the current children."""
        return [child.process.pid for child in self._children if child.process.pid is not None]

    def start(self) -> None:
        """Spawn the children."""
        for _ in range(self._size):
            self._spawn()

    def _spawn(self) -> None:
        child = _Child(self._target)
        self._children.add(child)
        self._idle.put_nowait(child)

    def _replace(self, child: _Child) -> None:
        self._children.discard(child)
        child.kill()
        self._spawn()

    async def run(
        self,
        task_name: str,
        calls: Sequence[Call],
        timeout_s: float | None,
        resumes: Sequence[Resume | None] = (),
        on_checkpoint: Sink | None = None,
    ) -> list[Outcome]:
        """Run calls of one task in one child; their outcomes in order.

        Args:
            task_name: the task.
            calls: its calls.
            timeout_s: the most the child may take.
            resumes: for a checkpointing task, each call's :class:`Resume`.
            on_checkpoint: where the checkpoints the calls save go, as they come.

        Raises:
            TimeoutError: the child took longer than ``timeout_s``; it was killed and replaced.
            ChildDied: the child died; it was replaced.
        """
        child = await self._idle.get()
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[list[Outcome]] = loop.create_future()

        def on_readable() -> None:
            if answered.done():
                loop.remove_reader(child.connection.fileno())
                return
            try:
                kind, *message = child.connection.recv()
            except (EOFError, OSError):
                loop.remove_reader(child.connection.fileno())
                answered.set_exception(ChildDied(f"worker process {child.process.pid} died"))
                return
            if kind == _CHECKPOINT:
                if on_checkpoint is not None:
                    on_checkpoint(*message)
                return
            loop.remove_reader(child.connection.fileno())
            answered.set_result(message[0])

        try:
            child.connection.send((task_name, list(calls), list(resumes) or [None] * len(calls)))
            loop.add_reader(child.connection.fileno(), on_readable)
            async with asyncio.timeout(timeout_s):
                answers = await answered
        except BaseException:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(child.connection.fileno())
            self._replace(child)
            raise
        self._idle.put_nowait(child)
        return answers

    def close(self) -> None:
        """Kill every child."""
        for child in self._children:
            child.kill()
        self._children.clear()
