"""How much of a replica's output its PC ships to the platform (pure: no I/O).

Theory of operation. Each replica has two token buckets: lines and bytes, refilled at
``lines_per_s`` and ``bytes_per_s`` and holding ``burst_s`` seconds of each. A line is
shipped when both buckets hold enough for it, and dropped (counted) when either does not:
a worker printing 10 MB/s is cut to its byte rate, and the broker never sees the rest. The
first line shipped after drops is preceded by a marker line saying how many lines and
bytes were dropped and why; :meth:`Limiter.marker` gives it on its own once the buckets
allow a line again, so a worker that went quiet after a flood still shows the cut. Lines
are cut to :data:`schemas.MAX_LINE_CHARS` characters before they are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import MAX_LINE_CHARS

__all__ = ["Limiter", "LogLimits", "cut"]


@dataclass(frozen=True, slots=True)
class LogLimits:
    """The most output one replica may ship, and the PC's local log file's bound."""

    lines_per_s: float = 100.0
    bytes_per_s: float = 32 * 1024
    burst_s: float = 2.0
    #: The local file a process replica writes is emptied once it grows past this.
    file_bytes: int = 8 * 1024 * 1024


def cut(text: str) -> str:
    """A line as the wire takes it: at most :data:`MAX_LINE_CHARS` characters."""
    return text if len(text) <= MAX_LINE_CHARS else text[: MAX_LINE_CHARS - 1] + "…"


class Limiter:
    """One replica's two token buckets; see the module's header."""

    def __init__(self, limits: LogLimits, now_s: float) -> None:
        self.limits = limits
        self._lines = limits.lines_per_s * limits.burst_s
        self._bytes = limits.bytes_per_s * limits.burst_s
        self._at = now_s
        self.dropped_lines = 0
        self.dropped_bytes = 0
        #: Every line and byte dropped since the replica started.
        self.total_dropped_lines = 0

    def admit(self, text: str, now_s: float) -> tuple[str | None, str | None]:
        """What to ship for one line printed now: (a marker of the lines dropped before
        it, or None; the line, or None when it is dropped)."""
        line = cut(text)
        size = len(line.encode())
        self._refill(now_s)
        if self._lines < 1 or self._bytes < size:
            self.dropped_lines += 1
            self.dropped_bytes += size
            self.total_dropped_lines += 1
            return None, None
        marker = self._take_marker()
        self._lines -= 1
        self._bytes -= size
        return marker, line

    def skipped(self, size_bytes: int) -> None:
        """Output that was never read (it came faster than it could be, past the local
        file's bound) counts as dropped."""
        if size_bytes > 0:
            self.dropped_bytes += size_bytes
            self.dropped_lines += 1

    def marker(self, now_s: float) -> str | None:
        """The marker of lines dropped so far, once a line could be shipped again."""
        self._refill(now_s)
        return self._take_marker() if self._lines >= 1 else None

    def _take_marker(self) -> str | None:
        if not self.dropped_lines:
            return None
        limits = self.limits
        text = (f"[idlecloud] {self.dropped_lines}+ lines ({self.dropped_bytes} bytes) of output "
                f"dropped: over this replica's limit of {limits.lines_per_s:g} lines/s and "
                f"{limits.bytes_per_s / 1024:g} KiB/s")  # fmt: skip
        self.dropped_lines = self.dropped_bytes = 0
        return text

    def _refill(self, now_s: float) -> None:
        elapsed = max(0.0, now_s - self._at)
        self._at = now_s
        limits = self.limits
        self._lines = min(limits.lines_per_s * limits.burst_s,
                          self._lines + elapsed * limits.lines_per_s)  # fmt: skip
        self._bytes = min(limits.bytes_per_s * limits.burst_s,
                          self._bytes + elapsed * limits.bytes_per_s)  # fmt: skip
