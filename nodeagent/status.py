"""Each replica's status folder: where its worker says how much work it holds unsaved.

The worker (:mod:`bus.sdk.status`) writes ``status`` in a folder of its own, handed to the
identity it runs as (mode 0700; the Docker runtime mounts it read-write at
:data:`STATUS_MOUNT`). When the agent pauses a replica it reads the file once: the
replica is frozen, so what it said is final. The folder is the replica's, so the file is
hostile input: it is opened without following links or blocking on a FIFO, must be a
regular file, is read to 256 bytes at most, and anything but a finite Unix time in the
past (or null) reads as "unknown", which evicts as before.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
from pathlib import Path

from bus.sdk.status import STATUS_FILE_ENV

__all__ = ["STATUS_FILE_ENV", "STATUS_MOUNT", "StatusFolders"]

#: Where a container finds its status folder.
STATUS_MOUNT = "/run/idlecloud-status"
_MAX_BYTES = 256


class StatusFolders:
    """Makes, reads and removes each replica's status folder under ``replica_dir/status``."""

    def __init__(self, replica_dir: Path) -> None:
        self._root = replica_dir / "status"
        self._root.mkdir(parents=True, exist_ok=True)
        self._root.chmod(0o711)

    def folder(self, replica_id: str) -> Path:
        """The (new, empty) status folder of ``replica_id``; the runtime hands it over."""
        folder = self._root / replica_id
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    def unsaved_s(self, replica_id: str, now: float) -> float | None:
        """Seconds of work the replica would lose if evicted at Unix time ``now``, or None
        when it runs nothing or said nothing usable."""
        since = self._read(self._root / replica_id / "status")
        if since is None or since > now:
            return None
        return now - since

    @staticmethod
    def _read(path: Path) -> float | None:
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                return None
            raw = os.read(descriptor, _MAX_BYTES + 1)
        except OSError:
            return None
        finally:
            os.close(descriptor)
        if len(raw) > _MAX_BYTES:
            return None
        try:
            since = json.loads(raw).get("unsaved_since")
        except (ValueError, AttributeError):
            return None
        if isinstance(since, bool) or not isinstance(since, int | float):
            return None
        return float(since) if math.isfinite(since) and since >= 0 else None

    def remove(self, replica_id: str) -> None:
        """Forget the replica's folder."""
        shutil.rmtree(self._root / replica_id, ignore_errors=True)
