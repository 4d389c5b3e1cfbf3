"""Being told when a file changes, without polling: inotify, read by the event loop.

The watch is on the file's directory, filtered by name, so it also sees the file being
created or atomically replaced (which a watch on the file itself would lose). The kernel's
events wake the event loop through ``add_reader``: nothing runs until the file changes.
When the kernel's event queue overflows (``IN_Q_OVERFLOW``: a busy directory, a slow
reader) events were lost, perhaps the file's own, so the watcher is told the file
changed: its reader reads it all again.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Callable
from pathlib import Path

__all__ = ["FileWatch"]

_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_Q_OVERFLOW = 0x4000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_MASK = _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
_EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class FileWatch:
    """Calls ``on_change`` soon after ``path`` is written, created, replaced or removed."""

    def __init__(self, path: str | Path, on_change: Callable[[], None]) -> None:
        self.path = Path(path)
        self._on_change = on_change
        self._fd = -1

    def start(self) -> None:
        """Start watching (the directory must exist).

        Raises:
            OSError: inotify is unavailable or the directory cannot be watched.
        """
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        directory = str(self.path.parent).encode()
        if _libc.inotify_add_watch(fd, directory, _MASK) < 0:
            error = ctypes.get_errno()
            os.close(fd)
            raise OSError(error, f"cannot watch {self.path.parent}: {os.strerror(error)}")
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._on_readable)

    def stop(self) -> None:
        """Stop watching."""
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        name = os.fsencode(self.path.name)
        offset, touched = 0, False
        while offset < len(data):
            _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            start = offset + _EVENT.size
            touched |= bool(mask & _IN_Q_OVERFLOW)  # lost events: read it all again
            touched |= data[start : start + length].rstrip(b"\0") == name
            offset = start + length
        if touched:
            self._on_change()
