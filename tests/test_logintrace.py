"""The lab's login trace and the capacity bound, pure: seeded days, classes that fill the
room, walk-ins that never overlap on a PC, and the bound no schedule can beat."""

from __future__ import annotations

import itertools

import pytest

from nodeagent.logintrace import LabDay, Session, capacity_bound_s, free_fraction, trace

PCS = [f"pc{i}" for i in range(5)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_day_holds_its_classes_and_walk_ins_that_never_overlap(seed: int) -> None:
    day = LabDay()
    sessions = trace(PCS, day, seed)
    assert sessions == trace(PCS, day, seed)  # the seed is the day
    assert sessions != trace(PCS, day, seed + 10)
    for pc in PCS:
        mine = sorted((s for s in sessions if s.pc == pc), key=lambda s: s.start_s)
        assert [(s.start_s, s.end_s) for s in mine[:1]] == [(0.0, 7200.0)]  # 08:00-10:00
        assert any((s.start_s, s.end_s) == (21_600.0, 28_800.0) for s in mine)
        assert all(a.end_s <= b.start_s for a, b in itertools.pairwise(mine))
        assert all(0 <= s.start_s < s.end_s <= 36_000 for s in mine)
    walk_ins = [s for s in sessions if (s.start_s, s.end_s) not in ((0, 7200), (21_600, 28_800))]
    assert len(walk_ins) >= len(PCS)  # a few people a day on each PC
    assert 0.30 <= free_fraction(sessions, PCS, 36_000) <= 0.55


def test_compression_divides_every_time() -> None:
    day = LabDay()
    assert trace(PCS, day, 7, compress=200) == [
        Session(s.pc, s.start_s / 200, s.end_s / 200) for s in trace(PCS, day, 7)
    ]


def test_the_bound_integrates_free_capacity_capped_by_the_replicas() -> None:
    sessions = [Session("a", 0, 10), Session("b", 0, 20)]
    # 0-10 s: nobody free; 10-20 s: a (1 core); from 20 s: a and b, at most 1 replica
    assert capacity_bound_s(sessions, ["a", "b"], 5.0, 1.0, 100) == pytest.approx(15.0)
    assert capacity_bound_s(sessions, ["a", "b"], 20.0, 1.0, 100) == pytest.approx(25.0)
    assert capacity_bound_s(sessions, ["a", "b"], 20.0, 1.0, 100, replicas=1) == pytest.approx(30.0)
    assert capacity_bound_s(sessions, ["a", "b"], 1000.0, 1.0, 100) is None  # not in a day
