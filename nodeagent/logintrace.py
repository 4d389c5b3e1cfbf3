"""A teaching lab's login trace: when people sit at which PCs (pure: seeded, no I/O).

Two kinds of presence make a lab day. **Class hours**: a timetable block holds every PC
of the room from its start to its end (a class fills the room). **Walk-ins**: on each PC,
people arrive as a Poisson process (``arrivals_per_h``), and each stays a log-normal time
(median ``median_stay_min``, shape ``stay_sigma``: most stay a while, a few all
afternoon). A walk-in who finds the PC taken sits elsewhere, so each PC's sessions never
overlap; a session that runs into a class ends where the class begins. Times are seconds
from the start of the day; ``compress`` divides every one of them, so a bench can play a
day in minutes.

The defaults are a plausible teaching lab: a day from 08:00 to 18:00 (10 h), classes at
08:00-10:00 and 14:00-16:00, one walk-in per PC every 75 minutes on average, staying 40
minutes at the median (sigma 0.8: one in ten stays longer than 1 h 50). On 5 PCs, seeds
1-3 leave them free 37-43 % of the day, in gaps of 47-64 minutes on average: the length
of a long research task.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field

__all__ = ["LabDay", "Session", "capacity_bound_s", "free_fraction", "trace"]


@dataclass(frozen=True, slots=True)
class Session:
    """A person at ``pc`` from ``start_s`` to ``end_s`` (seconds from the day's start)."""

    pc: str
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class LabDay:
    """The lab's day: its length, its classes and its walk-ins."""

    day_h: float = 10.0
    #: Class blocks, (start, end) in hours from the day's start.
    classes_h: tuple[tuple[float, float], ...] = field(default=((0.0, 2.0), (6.0, 8.0)))
    arrivals_per_h: float = 0.8
    median_stay_min: float = 40.0
    stay_sigma: float = 0.8


def trace(pcs: list[str], day: LabDay, seed: int, compress: float = 1.0) -> list[Session]:
    """Every session of the day, by start time; the same seed gives the same day.

    Args:
        pcs: the PCs' names.
        day: the lab's day.
        seed: the random seed of the walk-ins.
        compress: the factor every time is divided by.
    """
    draw = random.Random(seed)
    classes = [(start * 3600, end * 3600) for start, end in day.classes_h]
    end_of_day = day.day_h * 3600
    sessions = []
    for pc in pcs:
        taken = [(start, end) for start, end in classes]
        at = 0.0
        while True:
            at += draw.expovariate(day.arrivals_per_h / 3600)
            if at >= end_of_day:
                break
            stay = draw.lognormvariate(math.log(day.median_stay_min * 60), day.stay_sigma)
            if any(start <= at < end for start, end in taken):
                continue  # the PC is taken: this person sits elsewhere
            ends = min([at + stay, end_of_day, *(s for s, _e in classes if s > at)])
            taken.append((at, ends))
        sessions += [Session(pc, start / compress, end / compress) for start, end in taken]
    return sorted(sessions, key=lambda s: (s.start_s, s.pc))


def free_fraction(sessions: list[Session], pcs: list[str], day_s: float) -> float:
    """The share of the day the PCs are free of people (all PCs together)."""
    busy = sum(s.end_s - s.start_s for s in sessions)
    return 1.0 - busy / (day_s * len(pcs))


def capacity_bound_s(
    sessions: list[Session],
    pcs: list[str],
    work_s: float,
    cores_per_pc: float,
    day_s: float,
    replicas: int | None = None,
) -> float | None:
    """The earliest time ``work_s`` CPU-seconds could be done on the free PCs: the time the
    integral of free capacity (``cores_per_pc`` on each free PC, on at most ``replicas``
    of them) reaches it; None if the day's capacity falls short. No schedule can finish
    sooner."""
    edges = sorted({0.0, day_s, *(t for s in sessions for t in (s.start_s, s.end_s))})
    done = 0.0
    for begin, end in itertools.pairwise(edges):
        middle = (begin + end) / 2
        free = sum(
            1 for pc in pcs
            if not any(s.pc == pc and s.start_s <= middle < s.end_s for s in sessions)
        )  # fmt: skip
        rate = min(free, len(pcs) if replicas is None else replicas) * cores_per_pc
        if rate > 0 and done + rate * (end - begin) >= work_s:
            return begin + (work_s - done) / rate
        done += rate * (end - begin)
    return None
