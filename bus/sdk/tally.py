"""Counting a job's results as they are read from its stream (pure: no I/O).

A job's calls have the ids ``<job id>.<index>``, so its results can be told apart, put in
input order, and counted once each: the first outcome for an index is the job's, any later
one (the call ran twice because its first worker died after answering) is a duplicate.
The jobs service keeps one tally per job it follows; every reader of a job keeps its own.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field

from bus.sdk.protocol import Outcome

__all__ = ["MAX_NODES", "RATE_WINDOW_S", "JobTally", "new_job_id", "task_id", "task_index"]

#: A tally names at most this many PCs.
MAX_NODES = 10_000
#: The rate of results is measured over this many most recent seconds.
RATE_WINDOW_S = 60.0


def new_job_id() -> str:
    """A fresh job id: ``j`` and 80 random bits (see :data:`schemas.jobs.JOB_ID_PATTERN`)."""
    return f"j{secrets.token_hex(10)}"


def task_id(job_id: str, index: int) -> str:
    """The id of a job's call number ``index``."""
    return f"{job_id}.{index}"


def task_index(job_id: str, task: str) -> int | None:
    """The index of a call of ``job_id`` from its id; None for an id of something else."""
    head, dot, tail = task.partition(".")
    if head != job_id or not dot or not tail.isdigit() or len(tail) > 9:
        return None
    return int(tail)


@dataclass
class JobTally:
    """Which of a job's calls have an outcome, how many failed, and what came twice."""

    job_id: str
    done: int = 0
    failed: int = 0
    duplicates: int = 0
    #: Outcomes whose id is not one of this job's calls (a foreign or forged result).
    foreign: int = 0
    stored_bytes: int = 0
    #: Calls that came to a worker again (the one holding them went away unanswered).
    redelivered: int = 0
    #: CPU seconds its calls took, as their workers claim (every run counted).
    cpu_s: float = 0.0
    #: The PCs its results came from (at most :data:`MAX_NODES`).
    nodes: set[str] = field(default_factory=set)
    _seen: bytearray = field(default_factory=bytearray, repr=False)
    _arrivals: deque[float] = field(default_factory=deque, repr=False)
    _first_s: float | None = field(default=None, repr=False)

    @property
    def answered(self) -> int:
        """Calls with an outcome, failed or not."""
        return self.done + self.failed

    def add(
        self,
        outcomes: list[Outcome],
        size_bytes: int,
        now_s: float,
        node: str | None = None,
        costs: tuple[float, int] = (0.0, 0),
    ) -> list[tuple[int, Outcome]]:
        """Count one result message; return the calls it answered first, by index.

        Args:
            outcomes: what the message carried.
            size_bytes: its body's size, for the stored-bytes count.
            now_s: a monotonic time, for the rate.
            node: the PC it was computed on, if its worker said.
            costs: the CPU seconds its calls took and how many of them were redelivered
                (:func:`bus.sdk.protocol.result_costs`).
        """
        self.stored_bytes += size_bytes
        self.cpu_s += costs[0]
        self.redelivered += costs[1]
        if node and len(self.nodes) < MAX_NODES:
            self.nodes.add(node)
        first = []
        for outcome in outcomes:
            index = task_index(self.job_id, outcome.task_id)
            if index is None:
                self.foreign += 1
                continue
            if self._mark(index):
                first.append((index, outcome))
                if outcome.ok:
                    self.done += 1
                else:
                    self.failed += 1
                self._arrivals.append(now_s)
                self._first_s = now_s if self._first_s is None else self._first_s
            else:
                self.duplicates += 1
        self._forget_before(now_s - RATE_WINDOW_S)
        return first

    def rate_per_s(self, now_s: float) -> float:
        """Calls answered a second, over the last :data:`RATE_WINDOW_S` (or since the
        first answer, if that is more recent)."""
        self._forget_before(now_s - RATE_WINDOW_S)
        if not self._arrivals or self._first_s is None:
            return 0.0
        return len(self._arrivals) / min(max(now_s - self._first_s, 1.0), RATE_WINDOW_S)

    def _mark(self, index: int) -> bool:
        byte, bit = divmod(index, 8)
        if byte >= len(self._seen):
            self._seen.extend(bytes(byte + 1 - len(self._seen)))
        if self._seen[byte] & (1 << bit):
            return False
        self._seen[byte] |= 1 << bit
        return True

    def _forget_before(self, moment_s: float) -> None:
        while self._arrivals and self._arrivals[0] <= moment_s:
            self._arrivals.popleft()
