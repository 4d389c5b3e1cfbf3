"""What a worker tells its PC's agent: since when its running calls hold unsaved work.

A person sitting down freezes a replica; the platform then chooses between evicting it
(its calls run again elsewhere, from their last checkpoints) and keeping it paused a
while (the person may leave soon). What an eviction would throw away is the work each
running call did since its last stored checkpoint, or since it started if it has none.
The worker keeps, per running call, the wall-clock time that unsaved work began, and
writes the oldest one to ``IDLECLOUD_STATUS_FILE`` (JSON ``{"unsaved_since": <Unix
time or null>}``, replaced atomically) when it changes. New unsaved work is written once
it is :data:`SETTLE_S` old, so a call that ends sooner costs no write (two file writes a
message cost a worker about 250 µs, a quarter of its time on trivial calls); the file
may then say "nothing unsaved" about work younger than that, which the platform would
evict anyway (its ``evict_below_s`` is 5 s). The agent reads the file once
the replica is frozen, so it needs no channel of its own and the number cannot move
while the platform decides. The file is only advice: a replica that lies about it moves
nothing but its own eviction, within the agent's ``max_suspend_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

__all__ = ["SETTLE_S", "STATUS_FILE_ENV", "Later", "UnsavedWork", "status_from_environment"]

log = logging.getLogger(__name__)

#: The variable naming the status file in a replica's environment (see bus.sdk.contract).
STATUS_FILE_ENV = "IDLECLOUD_STATUS_FILE"
#: How old new unsaved work is before it is written (seconds).
SETTLE_S = 1.0


class _Cancellable(Protocol):
    def cancel(self) -> None: ...


#: Runs a callback after a delay (seconds); returns what cancels it, or None if it ran.
Later = Callable[[float, Callable[[], None]], _Cancellable | None]


def _call_later(delay_s: float, callback: Callable[[], None]) -> _Cancellable | None:
    """On the running event loop; without one (a script), at once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        callback()
        return None
    return loop.call_later(delay_s, callback)


class UnsavedWork:
    """Per running call, when its unsaved work began; the oldest, written to a file."""

    def __init__(
        self,
        path: Path | None,
        clock: Callable[[], float] = time.time,
        *,
        settle_s: float = SETTLE_S,
        later: Later = _call_later,
    ) -> None:
        """Write to ``path`` (nothing when None); ``clock`` gives Unix times; new unsaved
        work is written ``settle_s`` later, through ``later``."""
        self._path = path
        self._clock = clock
        self._settle_s = settle_s
        self._later = later
        self._pending: _Cancellable | None = None
        self._since: dict[str, float] = {}
        self._written: float | None = None
        self._write(None)

    @property
    def since(self) -> float | None:
        """The oldest unsaved work's start (Unix time), or None when nothing runs."""
        return min(self._since.values(), default=None)

    def started(self, *task_ids: str) -> None:
        """Calls began (or began again): their work is unsaved from now."""
        now = self._clock()
        for task_id in task_ids:
            self._since[task_id] = now
        self._changed()

    def saved(self, task_id: str) -> None:
        """A running call's checkpoint was stored: its unsaved work begins again now."""
        if task_id in self._since:
            self._since[task_id] = self._clock()
            self._changed()

    def ended(self, *task_ids: str) -> None:
        """Calls ended (answered, or handed back): nothing of them is at stake."""
        ran = [self._since.pop(task_id, None) for task_id in task_ids]
        if any(since is not None for since in ran):
            self._changed()

    def _changed(self) -> None:
        since = self.since
        if since is not None and self._written is None:  # new: written once it has settled
            if self._pending is None:
                self._pending = self._later(self._settle_s, self._settled)
        elif since != self._written:
            self._write(since)
        elif self._pending is not None:  # back to what the file says
            self._pending.cancel()
            self._pending = None

    def _settled(self) -> None:
        self._pending = None
        if self.since != self._written:
            self._write(self.since)

    def _write(self, since: float | None) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._written = since
        if self._path is None:
            return
        staged = self._path.with_name(f".{self._path.name}.new")
        try:
            staged.write_text(json.dumps({"unsaved_since": since}))
            os.replace(staged, self._path)
        except OSError as error:  # advice only: the worker goes on without it
            log.warning("cannot write the status file %s: %s", self._path, error.strerror)
            with contextlib.suppress(OSError):
                staged.unlink()


def status_from_environment() -> UnsavedWork:
    """The tracker for this process: writing where the platform said, else nowhere."""
    path = os.environ.get(STATUS_FILE_ENV)
    return UnsavedWork(Path(path) if path else None)
