"""What a worker tells its PC's agent: since when its running calls hold unsaved work.

A person sitting down freezes a replica; the platform then chooses between evicting it
(its calls run again elsewhere, from their last checkpoints) and keeping it paused a
while (the person may leave soon). What an eviction would throw away is the work each
running call did since its last stored checkpoint, or since it started if it has none.
The worker keeps, per running call, the wall-clock time that unsaved work began, and
writes the oldest one to ``IDLECLOUD_STATUS_FILE`` (JSON ``{"unsaved_since": <Unix
time or null>}``, replaced atomically) whenever it changes. The agent reads the file once
the replica is frozen, so it needs no channel of its own and the number cannot move
while the platform decides. The file is only advice: a replica that lies about it moves
nothing but its own eviction, within the agent's ``max_suspend_s``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["STATUS_FILE_ENV", "UnsavedWork", "status_from_environment"]

log = logging.getLogger(__name__)

#: The variable naming the status file in a replica's environment (see bus.sdk.contract).
STATUS_FILE_ENV = "IDLECLOUD_STATUS_FILE"


class UnsavedWork:
    """Per running call, when its unsaved work began; the oldest, written to a file."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        """Write to ``path`` (nothing when None); ``clock`` gives Unix times."""
        self._path = path
        self._clock = clock
        self._since: dict[str, float] = {}
        self._written: float | None = None
        self._write(None)

    @property
    def since(self) -> float | None:
        """The oldest unsaved work's start (Unix time), or None when nothing runs."""
        return min(self._since.values(), default=None)

    def started(self, task_id: str) -> None:
        """A call began (or began again): its work is unsaved from now."""
        self._since[task_id] = self._clock()
        self._changed()

    def saved(self, task_id: str) -> None:
        """A running call's checkpoint was stored: its unsaved work begins again now."""
        if task_id in self._since:
            self._since[task_id] = self._clock()
            self._changed()

    def ended(self, task_id: str) -> None:
        """A call ended (answered, or handed back): nothing of it is at stake."""
        if self._since.pop(task_id, None) is not None:
            self._changed()

    def _changed(self) -> None:
        since = self.since
        if since != self._written:
            self._write(since)

    def _write(self, since: float | None) -> None:
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
