"""The foreign-load signal: CPU used by processes that are not the platform's.

A person can use a PC without touching it (a long compilation, a video rendering). Every
``sample_s`` this source adds up the CPU time spent since the last sample by processes
that are *not* the platform's, in cores. Platform processes carry ``IDLECLOUD_PLATFORM=1``
in their environment (the `bus` command sets it for itself, so agents, workers, services
and simulated PCs inherit it, and the agent puts it into every replica's environment), or
belong to one of ``platform_users`` (``rabbitmq`` on a machine that also hosts the
broker). Kernel threads are not counted. A process is classified once, by pid and start
time, so only new processes cost an environment read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

import psutil

from bus.service import supervised

__all__ = ["PLATFORM_MARKER", "ForeignLoadSource"]

#: The environment variable that marks a process as the platform's.
PLATFORM_MARKER = "IDLECLOUD_PLATFORM"

_Key = tuple[int, float]  # (pid, start time): a pid is reused, this pair is not


class ForeignLoadSource:
    """Samples the CPU load of foreign processes and reports it after each sample."""

    def __init__(
        self,
        on_sample: Callable[[float], None],
        *,
        sample_s: float = 5.0,
        platform_users: Iterable[str] = (),
    ) -> None:
        self._on_sample = on_sample
        self.sample_s = sample_s
        self._platform_users = frozenset(platform_users)
        self._foreign: dict[_Key, bool] = {}
        self._cpu_seen: dict[_Key, float] = {}
        self._sampled_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.cores = 0.0

    def start(self) -> None:
        """Take a first sample (the baseline) and sample every ``sample_s`` from now on."""
        self.sample()
        self._task = asyncio.create_task(supervised("foreign load sampler", self._loop))

    def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.sample_s)
            self._on_sample(self.sample())

    def _is_foreign(self, process: psutil.Process) -> bool:
        """Classify a process once: foreign unless marked, a platform user's, or a kernel thread."""
        if not process.cmdline():
            return False
        if process.username() in self._platform_users:
            return False
        with contextlib.suppress(psutil.AccessDenied):
            return process.environ().get(PLATFORM_MARKER) != "1"
        return True

    def sample(self) -> float:
        """Foreign CPU cores used since the previous sample (0 on the first)."""
        now = time.monotonic()
        cpu_seen: dict[_Key, float] = {}
        alive: set[_Key] = set()
        spent_s = 0.0
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                with process.oneshot():
                    key = (process.pid, process.create_time())
                    alive.add(key)
                    if key not in self._foreign:
                        self._foreign[key] = self._is_foreign(process)
                    if not self._foreign[key]:
                        continue
                    times = process.cpu_times()
                    cpu_seen[key] = times.user + times.system
                spent_s += cpu_seen[key] - self._cpu_seen.get(key, 0.0)
        self._foreign = {key: foreign for key, foreign in self._foreign.items() if key in alive}
        first = self._sampled_at is None
        elapsed_s = 0.0 if self._sampled_at is None else now - self._sampled_at
        self._sampled_at, self._cpu_seen = now, cpu_seen
        self.cores = 0.0 if first or elapsed_s <= 0 else max(0.0, spent_s / elapsed_s)
        return self.cores
