"""A weekly timetable of hours the platform must leave a PC alone (a lab's class hours).

Entries read like a class schedule: ``mon-fri 08:00-12:00``, ``tue,thu 14:00-17:30``,
``sat 00:00-24:00``. Times are the PC's local wall clock. Pure: the caller passes the
moment; :meth:`Timetable.next_change` says when the answer will next flip, so the agent
sets one timer instead of polling.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["Timetable", "Window"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ENTRY = re.compile(
    r"^\s*(?P<days>[a-z,\-]+)\s+(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})\s*$"
)
_MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class Window:
    """Blocked from ``start_min`` to ``end_min`` (minutes after midnight) on ``days``."""

    days: frozenset[int]
    start_min: int
    end_min: int


def _minutes(text: str, entry: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    value = hours * 60 + minutes
    if minutes > 59 or value > _MINUTES_PER_DAY:
        raise ValueError(f"{entry!r}: {text} is not a time of day (00:00 to 24:00)")
    return value


def _days(text: str, entry: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise ValueError(f"{entry!r}: days are {', '.join(_DAYS)}, as 'mon-fri' or 'tue,thu'")
        start, end = _DAYS.index(first), _DAYS.index(last or first)
        days.update(range(start, end + 1) if start <= end else [*range(start, 7), *range(end + 1)])
    return frozenset(days)


@dataclass(frozen=True, slots=True)
class Timetable:
    """The blocked windows of a week."""

    windows: tuple[Window, ...] = ()

    @classmethod
    def parse(cls, entries: Sequence[str]) -> Timetable:
        """Read entries like ``mon-fri 08:00-12:00``.

        Raises:
            ValueError: an entry is malformed; the message names it and the expected form.
        """
        windows = []
        for entry in entries:
            found = _ENTRY.match(entry.lower())
            if found is None:
                raise ValueError(
                    f"{entry!r}: expected DAYS HH:MM-HH:MM, e.g. 'mon-fri 08:00-12:00'"
                )
            start, end = _minutes(found["start"], entry), _minutes(found["end"], entry)
            if end <= start:
                raise ValueError(f"{entry!r}: the window must end after it starts")
            windows.append(Window(_days(found["days"], entry), start, end))
        return cls(tuple(windows))

    def blocked(self, moment: datetime) -> bool:
        """Whether ``moment`` (local time) falls in a blocked window."""
        minute = moment.hour * 60 + moment.minute
        weekday = moment.weekday()
        return any(weekday in w.days and w.start_min <= minute < w.end_min for w in self.windows)

    def next_change(self, moment: datetime) -> datetime | None:
        """The first minute boundary after ``moment`` where :meth:`blocked` flips, if any."""
        if not self.windows:
            return None
        now = self.blocked(moment)
        boundaries = sorted(
            {
                (day, minute)
                for w in self.windows
                for day in w.days
                for minute in (w.start_min, w.end_min)
            }
        )
        midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        week_start = midnight - timedelta(days=moment.weekday())
        for week in (0, 1):
            for day, minute in boundaries:
                candidate = week_start + timedelta(days=day + 7 * week, minutes=minute)
                if candidate > moment and self.blocked(candidate) != now:
                    return candidate
        return None
