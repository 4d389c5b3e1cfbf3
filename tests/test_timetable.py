"""The weekly timetable of class hours (pure)."""

from __future__ import annotations

from datetime import datetime

import pytest

from nodeagent.timetable import Timetable

# 2026-11-23 is a Monday.
MON = datetime(2026, 11, 23)


def at(day: int, hhmm: str) -> datetime:
    hours, minutes = (int(part) for part in hhmm.split(":"))
    return MON.replace(day=23 + day, hour=hours, minute=minutes)


def test_class_hours_block_and_the_rest_does_not() -> None:
    table = Timetable.parse(["mon-fri 08:00-12:00", "tue,thu 14:00-17:30", "sat-sun 00:00-24:00"])
    assert table.blocked(at(0, "08:00")) and table.blocked(at(0, "11:59"))
    assert not table.blocked(at(0, "12:00")) and not table.blocked(at(0, "07:59"))
    assert table.blocked(at(1, "15:00")) and not table.blocked(at(2, "15:00"))
    assert table.blocked(at(5, "03:00")) and table.blocked(at(6, "23:59"))


def test_next_change_is_the_next_flip_even_across_days_and_weeks() -> None:
    table = Timetable.parse(["mon-fri 08:00-12:00", "mon 12:00-13:00"])
    assert table.next_change(at(0, "07:00")) == at(0, "08:00")
    assert table.next_change(at(0, "09:30")) == at(0, "13:00")  # back-to-back windows merge
    assert table.next_change(at(4, "12:00")) == at(7, "08:00")  # Friday noon -> next Monday
    assert Timetable().next_change(MON) is None


def test_day_ranges_may_wrap_the_week() -> None:
    table = Timetable.parse(["fri-mon 20:00-22:00"])
    assert [table.blocked(at(day, "21:00")) for day in range(7)] == [
        True, False, False, False, True, True, True,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ("weekdays 08:00-12:00", "days are mon, tue"),
        ("mon 8-12", "expected DAYS HH:MM-HH:MM"),
        ("mon 12:00-08:00", "must end after it starts"),
        ("mon 08:00-25:00", "is not a time of day"),
        ("mon 08:75-09:00", "is not a time of day"),
    ],
)
def test_malformed_entries_say_what_is_wrong(entry: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Timetable.parse([entry])
