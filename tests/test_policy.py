"""The presence policy, without I/O: scenarios for each rule, and invariants under hypothesis."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.policy import Action, Observation, Phase, PolicySettings, PresencePolicy
from schemas import PresenceCause, PresenceMode, PresenceState

FAST = PolicySettings(
    start_idle_s=0, continue_idle_s=30, max_suspend_s=100, input_active_s=10,
    busy_load=0.3, busy_load_for_s=5,
)  # fmt: skip


def test_a_pc_waits_start_idle_s_before_it_takes_work() -> None:
    policy = PresencePolicy(PolicySettings(start_idle_s=900), now=0)
    first = policy.observe(Observation(at=1))
    assert (first.phase, first.cause, first.accepting) == (
        Phase.WARMING,
        PresenceCause.STARTING,
        False,
    )
    assert first.presence is PresenceState.BUSY
    assert first.next_check_at == 900
    assert policy.observe(Observation(at=899)).phase is Phase.WARMING
    ready = policy.observe(Observation(at=900))
    assert (ready.phase, ready.accepting, ready.presence) == (
        Phase.AVAILABLE,
        True,
        PresenceState.IDLE,
    )


def test_a_login_pauses_at_once_and_a_logout_resumes_after_continue_idle_s() -> None:
    policy = PresencePolicy(FAST, now=0)
    login = policy.observe(Observation(at=10, sessions=1))
    assert (login.phase, login.cause, login.actions) == (
        Phase.OCCUPIED, PresenceCause.SESSION, (Action.PAUSE_ALL,)
    )  # fmt: skip
    assert login.next_check_at == 110  # the eviction deadline
    assert policy.observe(Observation(at=11, sessions=1)).actions == ()  # paused once
    logout = policy.observe(Observation(at=20))
    assert (logout.phase, logout.actions, logout.next_check_at) == (Phase.COOLING, (), 50)
    assert policy.observe(Observation(at=49)).actions == ()
    back = policy.observe(Observation(at=50))
    assert (back.phase, back.actions, back.cause) == (
        Phase.AVAILABLE, (Action.RESUME_ALL,), PresenceCause.NONE
    )  # fmt: skip


def test_returning_while_cooling_keeps_replicas_paused_without_a_second_pause() -> None:
    policy = PresencePolicy(FAST, now=0)
    policy.observe(Observation(at=1, sessions=1))
    policy.observe(Observation(at=2))
    again = policy.observe(Observation(at=20, sessions=1))
    assert (again.phase, again.actions) == (Phase.OCCUPIED, ())
    assert policy.observe(Observation(at=21)).phase is Phase.COOLING
    assert policy.observe(Observation(at=50)).phase is Phase.COOLING  # 29 s quiet only
    assert policy.observe(Observation(at=51)).actions == (Action.RESUME_ALL,)


def test_paused_replicas_are_evicted_after_max_suspend_s_then_work_restarts_fresh() -> None:
    policy = PresencePolicy(
        PolicySettings(start_idle_s=60, continue_idle_s=30, max_suspend_s=100), 0
    )
    policy.observe(Observation(at=60))
    policy.observe(Observation(at=100, sessions=1))
    evicted = policy.observe(Observation(at=200, sessions=1))
    assert evicted.actions == (Action.EVICT_PAUSED,)
    assert policy.observe(Observation(at=300, sessions=1)).actions == ()
    left = policy.observe(Observation(at=310))
    assert (left.phase, left.cause) == (Phase.WARMING, PresenceCause.STARTING)  # nothing to resume
    assert policy.observe(Observation(at=369)).phase is Phase.WARMING
    ready = policy.observe(Observation(at=370))
    assert (ready.phase, ready.actions) == (Phase.AVAILABLE, ())


def test_replacements_running_evicts_at_once_and_only_once() -> None:
    policy = PresencePolicy(FAST, now=0)
    policy.observe(Observation(at=1, sessions=1))
    assert policy.replacements_running(now=3).actions == (Action.EVICT_PAUSED,)
    assert policy.replacements_running(now=4).actions == ()
    assert policy.observe(Observation(at=200, sessions=1)).actions == ()


def test_eviction_while_cooling_means_nothing_resumes() -> None:
    policy = PresencePolicy(FAST, now=0)
    policy.observe(Observation(at=1, sessions=1))
    policy.observe(Observation(at=2))
    evicted = policy.replacements_running(now=5)
    assert (evicted.actions, evicted.phase) == ((Action.EVICT_PAUSED,), Phase.WARMING)
    assert policy.observe(Observation(at=40)).actions == ()


def test_foreign_load_counts_only_when_sustained() -> None:
    policy = PresencePolicy(FAST, now=0)
    spike = policy.observe(Observation(at=10, foreign_load=1.5))
    assert (spike.phase, spike.next_check_at) == (Phase.AVAILABLE, 15)
    assert policy.observe(Observation(at=12, foreign_load=0.1)).phase is Phase.AVAILABLE
    policy.observe(Observation(at=20, foreign_load=0.9))
    assert policy.observe(Observation(at=24.9, foreign_load=0.9)).phase is Phase.AVAILABLE
    busy = policy.observe(Observation(at=25, foreign_load=0.9))
    assert (busy.phase, busy.cause, busy.actions) == (
        Phase.OCCUPIED, PresenceCause.LOAD, (Action.PAUSE_ALL,)
    )  # fmt: skip


@pytest.mark.parametrize(
    ("observation", "cause"),
    [
        (
            Observation(at=100, sessions=1, last_input_at=99, timetable_block=True),
            PresenceCause.SESSION,
        ),
        (Observation(at=100, last_input_at=95, timetable_block=True), PresenceCause.INPUT),
        (Observation(at=100, last_input_at=80, timetable_block=True), PresenceCause.TIMETABLE),
    ],
)
def test_the_strongest_signal_is_the_cause(observation: Observation, cause: PresenceCause) -> None:
    policy = PresencePolicy(FAST, now=0)
    assert policy.observe(observation).cause is cause


def test_input_counts_for_input_active_s_after_the_last_event() -> None:
    policy = PresencePolicy(FAST, now=0)
    typing = policy.observe(Observation(at=100, last_input_at=100))
    assert (typing.phase, typing.next_check_at) == (Phase.OCCUPIED, 110)
    assert policy.observe(Observation(at=109.9, last_input_at=100)).phase is Phase.OCCUPIED
    assert policy.observe(Observation(at=110, last_input_at=100)).phase is Phase.COOLING


def test_tick_lets_time_pass_without_new_signals() -> None:
    policy = PresencePolicy(FAST, now=0)
    policy.observe(Observation(at=1, sessions=1))
    left = policy.observe(Observation(at=2))
    assert left.next_check_at == 32
    assert policy.tick(left.next_check_at).actions == (Action.RESUME_ALL,)


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="continue_idle_s must not be negative"):
        PolicySettings(continue_idle_s=-1)


COEXIST = PolicySettings(
    start_idle_s=0, continue_idle_s=30, max_suspend_s=100, input_active_s=10,
    mode=PresenceMode.COEXIST, coexist_min_idle_cores=0.5, coexist_memory_floor_mib=1024,
    memory_evict_every_s=1, thaw_after_s=2,
)  # fmt: skip


def seen(
    at: float, sessions: int = 1, idle: float = 1.0, memory: float = 8000, block: bool = False
) -> Observation:
    """What a coexisting PC's sources see: a person, by default, and calm fast signals."""
    return Observation(at=at, sessions=sessions, timetable_block=block, idle_cores=idle,
                       memory_available_mib=memory)  # fmt: skip


def test_in_coexist_mode_a_person_shares_the_pc_instead_of_freezing_it() -> None:
    policy = PresencePolicy(COEXIST, now=0)
    assert policy.observe(seen(1, sessions=0)).phase is Phase.AVAILABLE
    arrived = policy.observe(seen(2))
    assert arrived.actions == (Action.FIT_SHARE,)
    assert (arrived.phase, arrived.cause) == (Phase.SHARING, PresenceCause.SESSION)
    assert arrived.accepting and arrived.presence is PresenceState.SHARED
    left = policy.observe(seen(60, sessions=0))
    assert (left.phase, left.actions, left.presence) == (Phase.AVAILABLE, (), PresenceState.IDLE)


def test_the_persons_need_for_cpu_freezes_at_once_and_calm_thaws_after_thaw_after_s() -> None:
    policy = PresencePolicy(COEXIST, now=0)
    policy.observe(seen(1))
    needed = policy.observe(seen(1.1, idle=0.2))
    assert needed.actions == (Action.PAUSE_ALL,)
    assert needed.frozen and not needed.accepting and needed.presence is PresenceState.BUSY
    assert policy.observe(seen(1.2, idle=0.1)).actions == ()
    calm = policy.observe(seen(1.3))
    assert (calm.actions, calm.frozen, calm.next_check_at) == ((), True, 3.3)
    thawed = policy.tick(3.3)
    assert thawed.actions == (Action.RESUME_ALL,) and thawed.accepting


def test_short_memory_freezes_and_stops_the_newest_replica_every_memory_evict_every_s() -> None:
    policy = PresencePolicy(COEXIST, now=0)
    policy.observe(seen(1))
    first = policy.observe(seen(2, memory=500))
    assert first.actions == (Action.PAUSE_ALL, Action.EVICT_NEWEST)
    assert policy.observe(seen(2.5, memory=500)).actions == ()
    assert policy.observe(seen(3, memory=500)).actions == (Action.EVICT_NEWEST,)


def test_a_burst_of_input_freezes_and_typing_with_gaps_does_not() -> None:
    policy = PresencePolicy(COEXIST, now=0)
    for tenth in range(10, 60):  # a key every 0.4 s for 5 s: typing
        at = tenth / 10
        decision = policy.observe(replace(seen(at), last_input_at=at - at % 0.4))
        assert not decision.frozen
    first = policy.observe(replace(seen(6.0), last_input_at=6.0))
    assert first.next_check_at == pytest.approx(8.0)  # when it would become a burst
    for tenth in range(61, 80):  # input every tenth of a second: a game
        assert policy.observe(replace(seen(tenth / 10), last_input_at=tenth / 10)).actions == ()
    burst = policy.observe(replace(seen(8.0), last_input_at=8.0))
    assert burst.actions == (Action.PAUSE_ALL,)
    policy.observe(replace(seen(8.5), last_input_at=8.0))  # it passed
    assert policy.tick(10.5).actions == (Action.RESUME_ALL,)


def test_class_hours_suspend_a_coexisting_pc_and_sharing_resumes_after_them() -> None:
    policy = PresencePolicy(COEXIST, now=0)
    policy.observe(seen(1))
    block = policy.observe(seen(2, block=True))
    assert (block.phase, block.actions) == (Phase.OCCUPIED, (Action.PAUSE_ALL,))
    after = policy.observe(seen(10))
    assert (after.phase, after.actions, after.frozen) == (Phase.SHARING, (Action.FIT_SHARE,), True)
    assert policy.tick(12).actions == (Action.RESUME_ALL,)


def test_frozen_replicas_are_evicted_after_max_suspend_s_and_nothing_thaws_after() -> None:
    policy = PresencePolicy(COEXIST, now=0)
    policy.observe(seen(1))
    policy.observe(seen(2, idle=0.0))
    assert policy.observe(seen(102, idle=0.0)).actions == (Action.EVICT_PAUSED,)
    policy.observe(seen(103))
    thawed = policy.tick(105)
    assert thawed.actions == () and thawed.accepting


steps = st.lists(
    st.tuples(
        st.floats(0.01, 200),  # time until the next observation
        st.integers(0, 2),  # login sessions
        st.one_of(st.none(), st.floats(0, 30)),  # seconds since the last input
        st.floats(0, 2),  # foreign load in cores
        st.booleans(),  # timetable block
        st.booleans(),  # placement reports replacements running
        st.one_of(st.none(), st.floats(0, 2)),  # idle cores the person leaves
        st.one_of(st.none(), st.floats(0, 4096)),  # memory available, MiB
    ),
    max_size=60,
)
Step = tuple[float, int, float | None, float, bool, bool, float | None, float | None]


@settings(max_examples=400, deadline=None)
@given(start_idle_s=st.sampled_from([0.0, 50.0]), mode=st.sampled_from(PresenceMode), steps=steps)
def test_invariants_hold_for_any_sequence(
    start_idle_s: float, mode: PresenceMode, steps: list[Step]
) -> None:
    policy = PresencePolicy(
        PolicySettings(start_idle_s, continue_idle_s=30, max_suspend_s=100, input_active_s=10,
                       busy_load=0.3, busy_load_for_s=5, mode=mode),
        now=0,
    )  # fmt: skip
    floor, min_idle = (
        policy.settings.coexist_memory_floor_mib,
        policy.settings.coexist_min_idle_cores,
    )
    now, paused, running = 0.0, False, start_idle_s == 0
    last_presence_at: float | None = None
    for wait_s, sessions, input_ago, load, block, replaced, idle, memory in steps:
        now += wait_s
        observation = Observation(
            at=now,
            sessions=sessions,
            last_input_at=None if input_ago is None else now - input_ago,
            foreign_load=load,
            timetable_block=block,
            idle_cores=idle,
            memory_available_mib=memory,
        )
        decision = policy.replacements_running(now) if replaced else policy.observe(observation)
        for action in decision.actions:
            if action is Action.PAUSE_ALL:
                assert not paused, "paused twice"
                paused = True
            elif action is Action.RESUME_ALL:
                assert paused, "resumed what was never paused"
                paused = False
            elif action is Action.EVICT_PAUSED:
                assert paused, "evicted what was never paused"
                paused = False
            else:
                assert decision.phase is Phase.SHARING, f"{action} outside sharing"
        if decision.phase in (Phase.OCCUPIED, Phase.SHARING):
            last_presence_at = now
        if decision.phase is Phase.SHARING:
            assert mode is PresenceMode.COEXIST, "shared a PC in suspend mode"
            assert not (block and not replaced), "shared a PC during class hours"
            needs = (idle is not None and idle < min_idle) or (
                memory is not None and memory < floor
            )
            if needs and not replaced:
                assert not decision.accepting, "replicas ran while the person needed the PC"
        if decision.accepting:
            assert not paused
            assert decision.phase in (Phase.AVAILABLE, Phase.SHARING)
            if mode is PresenceMode.SUSPEND and last_presence_at is not None and not running:
                assert now - last_presence_at >= 30, "came back before continue_idle_s"
        assert decision.presence is (
            PresenceState.BUSY if not decision.accepting
            else PresenceState.SHARED if decision.phase is Phase.SHARING
            else PresenceState.IDLE
        )  # fmt: skip
        running = decision.accepting
        if decision.next_check_at is not None:
            assert decision.next_check_at > now, "asks to be checked in the past"
