"""Which leader a PC obeys (pure: no I/O, the time is given).

Theory of operation
-------------------
A leader's epoch is the journal offset at which it took over; every command carries it.
A PC obeys the newest epoch it has heard and drops commands of an older one, so a
deposed leader cannot undo its successor's work. But an epoch is only a number in a
message: one from far ahead (a forged command, a corrupted one) would make the PC drop
every command of the real leader for good. The journal cannot grow faster than
:data:`MAX_JOURNAL_ENTRIES_PER_S` (every append is a publish the broker confirms; one
stream takes far fewer a second), so no real epoch is further ahead of the first one
this PC heard than that rate times the time since, plus :data:`EPOCH_SLACK`. An epoch
beyond it is refused and changes nothing: the real leader's next command is obeyed. The
bound is measured from the first epoch heard, not the latest, so no run of commands can
walk it forward. The first epoch a PC hears is taken as it is: there is nothing yet to
judge it against.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["EPOCH_SLACK", "MAX_JOURNAL_ENTRIES_PER_S", "EpochGuard", "Verdict"]

#: The fastest the journal can grow.
MAX_JOURNAL_ENTRIES_PER_S = 10_000
#: Entries the journal may have grown by beyond that rate (clocks, bursts).
EPOCH_SLACK = 100_000


class Verdict(Enum):
    """What to do with a command of some epoch."""

    OBEY = "obey"
    STALE = "stale"  # an older leader's: dropped
    LEAP = "leap"  # further ahead than any leader could be: refused


@dataclass
class EpochGuard:
    """The newest epoch obeyed, and the first one heard with when; see the module's header."""

    epoch: int = 0
    _first: tuple[int, float] | None = None

    def judge(self, epoch: int, now: float) -> Verdict:
        """Judge a command's epoch, and obey it (remember it) if it is the newest."""
        if epoch < self.epoch:
            return Verdict.STALE
        if self._first is None:
            self._first = (epoch, now)
        else:
            first, heard_at = self._first
            reachable = first + EPOCH_SLACK + MAX_JOURNAL_ENTRIES_PER_S * max(0.0, now - heard_at)
            if epoch > reachable:
                return Verdict.LEAP
        self.epoch = epoch
        return Verdict.OBEY
