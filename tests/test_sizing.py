"""How many calls a default map packs per message (bus.sdk.sizing; pure, no I/O)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bus.sdk.sizing import MOST_CALLS, TARGET_S, BatchSizer


def test_one_call_per_message_until_a_run_time_is_reported() -> None:
    sizer = BatchSizer()
    assert sizer.size == 1
    sizer.observe(0.0)  # a result without a run time (an older worker): no news
    assert sizer.size == 1


def test_tiny_calls_fill_a_message_and_millisecond_calls_make_it_the_target() -> None:
    sizer = BatchSizer()
    sizer.observe(2e-6)
    assert sizer.size == MOST_CALLS
    sizer = BatchSizer()
    sizer.observe(0.001)
    assert sizer.size == round(TARGET_S / 0.001)


def test_one_long_call_among_tiny_ones_brings_the_size_down_at_once() -> None:
    sizer = BatchSizer()
    for _ in range(1000):
        sizer.observe(1e-5)
    assert sizer.size == MOST_CALLS
    sizer.observe(5.0)  # 100 times the target
    assert sizer.size == 1


def test_calls_longer_than_the_target_go_one_per_message() -> None:
    sizer = BatchSizer()
    for _ in range(10):
        sizer.observe(0.2)
    assert sizer.size == 1


@given(st.lists(st.floats(min_value=-1.0, max_value=1e6, allow_nan=False), max_size=50))
def test_the_size_stays_between_one_and_the_most(run_times: list[float]) -> None:
    sizer = BatchSizer()
    for wall_s in run_times:
        sizer.observe(wall_s)
        assert 1 <= sizer.size <= MOST_CALLS
