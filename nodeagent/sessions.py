"""The login-session signal: how many people are logged in, from utmp, told by inotify."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nodeagent.utmp import Session, read_sessions
from nodeagent.watch import FileWatch

__all__ = ["SessionSource"]


class SessionSource:
    """Keeps the list of login sessions current and reports each change at once."""

    def __init__(self, utmp_path: str | Path, on_change: Callable[[list[Session]], None]) -> None:
        self.utmp_path = Path(utmp_path)
        self._on_change = on_change
        self.sessions: list[Session] = []
        self._watch = FileWatch(self.utmp_path, self._reread)

    def start(self) -> list[Session]:
        """Read the sessions now and watch for changes; return the current ones.

        Raises:
            OSError: the utmp file's directory cannot be watched.
        """
        self._watch.start()
        self.sessions = read_sessions(self.utmp_path)
        return self.sessions

    def stop(self) -> None:
        """Stop watching."""
        self._watch.stop()

    def _reread(self) -> None:
        sessions = read_sessions(self.utmp_path)
        if sessions != self.sessions:
            self.sessions = sessions
            self._on_change(sessions)
