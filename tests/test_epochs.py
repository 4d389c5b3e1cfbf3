"""The epoch guard, pure: which leader's commands a PC obeys."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nodeagent.epochs import EPOCH_SLACK, MAX_JOURNAL_ENTRIES_PER_S, EpochGuard, Verdict


def test_an_epoch_from_far_ahead_is_refused_and_the_real_leaders_next_is_obeyed() -> None:
    guard = EpochGuard()
    assert guard.judge(41, now=0.0) is Verdict.OBEY
    assert guard.judge(2**52, now=1.0) is Verdict.LEAP
    assert guard.epoch == 41  # nothing changed
    assert guard.judge(41, now=2.0) is Verdict.OBEY
    assert guard.judge(90, now=3.0) is Verdict.OBEY  # a real takeover
    assert guard.judge(41, now=4.0) is Verdict.STALE  # the deposed leader


def test_a_takeover_after_a_long_quiet_is_obeyed_however_far_the_journal_grew() -> None:
    guard = EpochGuard()
    guard.judge(10, now=0.0)
    week_s = 7 * 86_400.0
    assert guard.judge(10 + MAX_JOURNAL_ENTRIES_PER_S * int(week_s), now=week_s) is Verdict.OBEY


@given(steps=st.lists(st.integers(1, EPOCH_SLACK), min_size=1, max_size=200))
def test_no_run_of_commands_walks_the_bound_forward(steps: list[int]) -> None:
    """Within one second, whatever epochs arrive, none obeyed is beyond the first heard
    plus the slack and a second's growth."""
    guard = EpochGuard()
    guard.judge(0, now=0.0)
    epoch = 0
    for step in steps:
        epoch += step
        guard.judge(epoch, now=1.0)
    assert guard.epoch <= EPOCH_SLACK + MAX_JOURNAL_ENTRIES_PER_S
