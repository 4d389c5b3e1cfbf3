"""The fast signals of ``coexist`` mode: the CPU a person's processes leave idle, and memory.

Beside a person, replicas run at the lowest scheduling class, so the kernel already gives
the person every core they want; what the agent must notice quickly is that the person's
work wants so much that little is left (a build on every core), or that memory runs
short. Every ``sample_s`` (50 ms: work that takes every core shows in the second sample
after it began; at 100 ms a process freeze took up to 246 ms in bench/coexist.py), while
the agent shares the PC with a person, this source reads three things:

- the PC's busy CPU time: its root control group's, in nanoseconds (``/proc/stat``'s
  first line, all but idle and iowait, counts 10 ms ticks: in a 50 ms window that is up
  to 0.4 of two cores wrong, and such a misreading froze replicas for nothing);
- each replica's CPU time, from its control group (``Runtime.replica_cpu_ns``);
- ``MemAvailable`` from ``/proc/meminfo``.

The cores left idle by everything but the replicas are ``cores - (busy - replicas) /
elapsed``. The agent's own CPU counts as load: it is small, and it competes with the
person too (subtracting it was tried: an agent sharing its process with a busy caller,
as in the tests, then hid half a core of the person's load). A replica that ended
between two samples is left out of both, so its group's removal never looks like the
person's work. The system-wide CPU pressure (PSI) is not used: on cgroup v1 it cannot be
read per group, and replicas waiting behind the person's work would raise it as much as
the person's own tasks waiting. The source calls back after every sample; the policy's
thresholds decide.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from bus.service import supervised
from nodeagent.runtime.cgroup import Cgroup, Mounts

__all__ = ["PressureSource", "busy_ticks", "memory_available_mib"]

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_READ_BYTES = 16384  # more than meminfo, the root's cpu.stat or /proc/stat's first line


def busy_ticks(stat_text: str) -> int:
    """Clock ticks every CPU spent busy, from ``/proc/stat``'s text (idle and iowait are not)."""
    fields = [int(value) for value in stat_text.split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    del idle, iowait
    return user + nice + system + irq + softirq + steal


def memory_available_mib(meminfo_text: str) -> float | None:
    """``MemAvailable`` in MiB, from ``/proc/meminfo``'s text (None on kernels without it)."""
    for line in meminfo_text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return None


class PressureSource:
    """Samples what the person's processes leave idle, and memory; see the module's header."""

    def __init__(
        self,
        on_sample: Callable[[], None],
        replica_cpu_ns: Callable[[], Mapping[str, int]],
        *,
        sample_s: float = 0.05,
        proc: Path = Path("/proc"),
    ) -> None:
        self._on_sample = on_sample
        self._replica_cpu_ns = replica_cpu_ns
        self.sample_s = sample_s
        root = Cgroup.named("", Mounts.read())  # every task's CPU time, to the nanosecond
        self._root = root if root.cpu_usage_ns() is not None else None
        self._busy_file = proc / "stat" if self._root is None else self._root.cpu_usage_file
        self._meminfo_file = proc / "meminfo"
        self._kept: tuple[int, int] | None = None  # (busy, meminfo): open while sampling
        self._cores = os.cpu_count() or 1
        self._seen: tuple[float, int, Mapping[str, int]] | None = None
        self._task: asyncio.Task[None] | None = None
        #: Cores left idle by all but the replicas at the last sample (None before two).
        self.idle_cores: float | None = None
        self.memory_available_mib: float | None = None

    def start(self) -> None:
        """Take a first sample (the baseline) and sample every ``sample_s`` from now on
        (idempotent)."""
        if self._task is None:
            busy = os.open(self._busy_file, os.O_RDONLY)
            self._kept = busy, os.open(self._meminfo_file, os.O_RDONLY)
            self.sample()
            self._task = asyncio.create_task(supervised("pressure sampler", self._loop))

    def stop(self) -> None:
        """Stop sampling and forget the readings: they say nothing until a new start
        (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for fd in self._kept or ():
            os.close(fd)
        self._kept = None
        self._seen, self.idle_cores, self.memory_available_mib = None, None, None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.sample_s)
            self.sample()
            self._on_sample()

    def sample(self) -> None:
        """Read the counters (kept open: twenty reads a second), and from the previous
        reading the cores left idle."""
        assert self._kept is not None, "sampled before start"
        now = time.monotonic()
        busy_text = os.pread(self._kept[0], _READ_BYTES, 0)
        if self._root is None:  # no root group to read: the kernel's ticks
            busy: int | None = busy_ticks(busy_text.decode()) * 1_000_000_000 // _TICKS_PER_S
        else:
            busy = self._root.cpu_usage_ns(busy_text)
        if busy is None:  # unreadable this once: the next sample tells
            return
        replicas = dict(self._replica_cpu_ns())
        meminfo = os.pread(self._kept[1], _READ_BYTES, 0).decode()
        self.memory_available_mib = memory_available_mib(meminfo)
        if self._seen is not None and now > self._seen[0]:
            then, busy_then, replicas_then = self._seen
            replicas_s = sum(
                max(0, used - replicas_then[rid]) for rid, used in replicas.items()
                if rid in replicas_then
            ) / 1e9  # fmt: skip
            others_s = max(0.0, (busy - busy_then) / 1e9 - replicas_s)
            self.idle_cores = max(0.0, self._cores - others_s / (now - then))
        self._seen = (now, busy, replicas)
