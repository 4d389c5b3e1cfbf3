"""Reading what a replica printed since the last read, for its PC's log shipper.

The process runtime sends a replica's stdout and stderr to a file of the agent's; it is
read from a byte offset on, and emptied once it has grown past its bound (the replica
writes with ``O_APPEND``, so it carries on at the new end). Output that came faster than
it could be read, past the bound, is skipped and counted. Docker keeps a container's
output itself (bounded by its ``json-file`` options); it is read by timestamp.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

__all__ = ["READ_MAX_BYTES", "Output", "docker_output", "read_file_output"]

#: At most this much output is read at a time.
READ_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Output:
    """New output, where the next read starts, and how many bytes were skipped."""

    data: bytes
    position: int
    skipped_bytes: int = 0


def read_file_output(path: Path, position: int, bound_bytes: int) -> Output:
    """What was appended to ``path`` since byte ``position``, at most
    :data:`READ_MAX_BYTES`. Once the file is past ``bound_bytes`` only its newest lines
    are read (what lies before them is skipped: the newest say most, a crash's traceback
    among them) and the file is emptied."""
    skipped = 0
    try:
        with path.open("rb") as log:
            size = os.fstat(log.fileno()).st_size
            if size < position:  # emptied meanwhile
                position = 0
            overflowing = size > bound_bytes
            start = max(position, size - READ_MAX_BYTES) if overflowing else position
            log.seek(start)
            data = log.read(min(size - start, READ_MAX_BYTES))
    except FileNotFoundError:
        return Output(b"", position)
    if start > position:  # the skipped part ends mid-line: so does what was read
        cut = data.find(b"\n") + 1
        skipped, data = start - position + cut, data[cut:]
    if overflowing:
        os.truncate(path, 0)
        return Output(data, 0, skipped)
    return Output(data, position + len(data), skipped)


def docker_output(lines: list[str], position: int) -> Output:
    """Docker's timestamped output lines (``2026-12-06T20:40:00.123456789Z text``) newer
    than ``position`` (nanoseconds since the epoch), and the newest one's time."""
    kept = []
    newest = position
    for line in lines:
        stamp, _, text = line.partition(" ")
        at = _nanoseconds(stamp)
        if at is None or at <= position:
            continue
        newest = max(newest, at)
        kept.append(text if text.endswith("\n") else text + "\n")
    return Output("".join(kept).encode(), newest)


def _nanoseconds(stamp: str) -> int | None:
    """An RFC 3339 time with up to nine fractional digits, in nanoseconds since the epoch."""
    head, _, fraction = stamp.rstrip("Z").partition(".")
    try:
        seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    except ValueError:
        return None
    digits = (fraction + "000000000")[:9]
    return int(seconds) * 1_000_000_000 + (int(digits) if digits.isdigit() else 0)
