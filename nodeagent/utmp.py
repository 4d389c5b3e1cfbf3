"""Login sessions from a utmp file: read them, and write them as ``login`` does.

The file is an array of glibc ``struct utmpx`` records (384 bytes on Linux). A login
session is a ``USER_PROCESS`` record; logging out turns it into a ``DEAD_PROCESS`` record
for the same line. Reading parses the records directly. Writing goes through libc's own
``utmpxname`` and ``pututxline``, exactly as ``login`` and display managers do, so the
simulated PCs (``bus sim login``) and the tests write real records.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RECORD_BYTES", "Session", "read_sessions", "write_login", "write_logout"]

USER_PROCESS = 7
DEAD_PROCESS = 8
#: ``short ut_type; pid_t ut_pid; char ut_line[32], ut_id[4], ut_user[32], ut_host[256];``
#: ``struct exit_status; int32 ut_session; struct {int32 sec, usec} ut_tv;``
#: ``int32 ut_addr_v6[4]; char reserved[20]``
_RECORD = struct.Struct("<hxxi32s4s32s256shhiii16s20s")
RECORD_BYTES = _RECORD.size


@dataclass(frozen=True, slots=True)
class Session:
    """A login session: who, on which line (tty or display), since when."""

    user: str
    line: str
    host: str
    pid: int
    since: float


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def read_sessions(path: str | Path) -> list[Session]:
    """The live login sessions recorded in a utmp file (none if it does not exist)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    sessions = []
    for offset in range(0, len(data) - RECORD_BYTES + 1, RECORD_BYTES):
        kind, pid, line, _id, user, host, _t, _e, _s, seconds, micros, _a, _r = _RECORD.unpack_from(
            data, offset
        )
        if kind == USER_PROCESS:
            sessions.append(
                Session(_text(user), _text(line), _text(host), pid, seconds + micros / 1e6)
            )
    return sessions


class _Utmpx(ctypes.Structure):
    _fields_ = (
        ("ut_type", ctypes.c_short),
        ("ut_pid", ctypes.c_int),
        ("ut_line", ctypes.c_char * 32),
        ("ut_id", ctypes.c_char * 4),
        ("ut_user", ctypes.c_char * 32),
        ("ut_host", ctypes.c_char * 256),
        ("e_termination", ctypes.c_short),
        ("e_exit", ctypes.c_short),
        ("ut_session", ctypes.c_int32),
        ("tv_sec", ctypes.c_int32),
        ("tv_usec", ctypes.c_int32),
        ("ut_addr_v6", ctypes.c_int32 * 4),
        ("reserved", ctypes.c_char * 20),
    )


assert ctypes.sizeof(_Utmpx) == RECORD_BYTES
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.pututxline.restype = ctypes.c_void_p
_libc_lock = threading.Lock()  # utmpxname() sets process-wide state


def _put(path: str | Path, record: _Utmpx) -> None:
    target = str(path).encode()
    with _libc_lock:
        if _libc.utmpxname(target) != 0:
            raise OSError(ctypes.get_errno(), f"utmpxname({path}) failed")
        _libc.setutxent()
        try:
            if not _libc.pututxline(ctypes.byref(record)):
                error = ctypes.get_errno()
                raise OSError(error, f"pututxline into {path}: {os.strerror(error)}")
        finally:
            _libc.endutxent()


def _record(kind: int, line: str, user: str = "", host: str = "") -> _Utmpx:
    now = time.time()
    record = _Utmpx()
    record.ut_type = kind
    record.ut_pid = os.getpid()
    record.ut_line = line.encode()[:31]
    record.ut_id = line.encode()[-4:]
    record.ut_user = user.encode()[:31]
    record.ut_host = host.encode()[:255]
    record.tv_sec = int(now)
    record.tv_usec = int((now % 1) * 1e6)
    return record


def write_login(path: str | Path, user: str, line: str = "tty7", host: str = "") -> None:
    """Record a login session on ``line``, as ``login`` would.

    Raises:
        OSError: the file could not be written.
    """
    Path(path).touch(exist_ok=True)
    _put(path, _record(USER_PROCESS, line, user, host))


def write_logout(path: str | Path, line: str = "tty7") -> None:
    """End the session on ``line`` (its record becomes ``DEAD_PROCESS``).

    Raises:
        OSError: the file could not be written.
    """
    _put(path, _record(DEAD_PROCESS, line))
