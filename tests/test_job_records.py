"""Jobs' pure parts: the records the journal rebuilds, and the tally of a job's results."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from bus.sdk.protocol import (
    AGAIN_HEADER,
    CPU_HEADER,
    MAX_CLAIMED_CPU_S,
    WALL_HEADER,
    Outcome,
    encode_outcomes,
    result_costs,
    result_wall_s,
)
from bus.sdk.tally import RATE_WINDOW_S, JobTally, new_job_id, task_id, task_index
from schemas import JobDelete, JobEnded, JobForgotten, JobSeal, JobSubmit, Message, utc_now
from schemas.jobs import JOB_ID_PATTERN
from schemas.journal import Entry
from services.state import DesiredState

JOB = "j00000000000000000001"


def state_after(*messages: Message) -> DesiredState:
    state = DesiredState()
    for offset, message in enumerate(messages):
        state.apply(Entry(offset, message))
    return state


def submit(total: int | None = None, request_id: str = "submit-1") -> JobSubmit:
    return JobSubmit(request_id=request_id, namespace="alice", job_id=JOB, app="stereo",
                     task="match", name="night", total=total, submitted_at=utc_now(),
                     submitter="user:alice:k1")  # fmt: skip


def ended(state: Literal["done", "cancelled", "expired"], done: int = 0) -> JobEnded:
    return JobEnded(namespace="alice", job_id=JOB, state=state, done=done, failed=0,
                    duplicates=0, stored_bytes=done * 40, at=utc_now())  # fmt: skip


def test_a_job_opens_is_sealed_and_ends_once() -> None:
    state = state_after(submit())
    assert state.jobs[("alice", JOB)].state == "submitting"
    state = state_after(submit(), JobSeal(request_id="seal-0001", namespace="alice",
                                          job_id=JOB, total=10))  # fmt: skip
    job = state.jobs[("alice", JOB)]
    assert (job.state, job.total) == ("running", 10)
    state = state_after(submit(10), ended("done", 10), ended("cancelled", 3))
    job = state.jobs[("alice", JOB)]
    assert (job.state, job.done, job.stored_bytes) == ("done", 10, 400)  # ends once
    first_end = job.ended_at
    state = state_after(submit(10), ended("done", 10), ended("expired", 10))
    job = state.jobs[("alice", JOB)]
    assert job.state == "expired" and job.ended_at is not None and first_end is not None
    assert job.ended_at - first_end < timedelta(seconds=1)  # the end it had, not the expiry


def test_a_repeated_submit_changes_nothing_and_a_deleted_job_stays_in_the_history() -> None:
    state = state_after(submit(10), ended("done", 10), submit(10))
    assert state.jobs[("alice", JOB)].state == "done"
    deleted = JobDelete(request_id="delete-1", namespace="alice", job_id=JOB)
    state = state_after(submit(10), ended("done", 10), deleted)
    job = state.jobs[("alice", JOB)]
    assert (job.state, job.done, job.stored_bytes, job.submitter) == (
        "deleted", 10, 0, "user:alice:k1"
    )  # fmt: skip
    state = state_after(submit(10), deleted, JobForgotten(namespace="alice", job_id=JOB))
    assert state.jobs == {}


def test_a_snapshot_keeps_every_job() -> None:
    state = state_after(submit(10), ended("cancelled", 4))
    restored = state_after(state.snapshot())
    assert restored.jobs == state.jobs


def test_the_tally_counts_each_call_once_and_tells_failures_duplicates_and_strangers() -> None:
    tally = JobTally(JOB)
    first = tally.add([Outcome(task_id(JOB, 0), True, 0), Outcome(task_id(JOB, 1), False,
                       error="boom")], 100, now_s=0.0)  # fmt: skip
    assert [index for index, _ in first] == [0, 1]
    again = tally.add([Outcome(task_id(JOB, 1), True, 1), Outcome(task_id(JOB, 9), True, 81)],
                      50, now_s=1.0)  # fmt: skip
    assert [index for index, _ in again] == [9]  # 1 came twice: its first outcome stands
    tally.add([Outcome("j99999999999999999999.3", True, 9), Outcome("nonsense", True)], 10, 2.0)
    assert (tally.done, tally.failed, tally.duplicates, tally.foreign) == (2, 1, 1, 2)
    assert (tally.answered, tally.stored_bytes) == (3, 160)


def test_a_results_cpu_and_redelivered_calls_travel_in_its_headers_bounded() -> None:
    """The worker's measure of each call's CPU, and whether it came again, are summed into
    the result message's headers; the tally adds what they claim, bounded, so a forged
    header cannot claim more than a message's share; the history keeps the sums."""
    outcomes = [Outcome(task_id(JOB, 0), True, 0, cpu_s=1.25, again=True),
                Outcome(task_id(JOB, 1), False, error="x", cpu_s=0.5)]  # fmt: skip
    _body, properties = encode_outcomes(outcomes, "batch-1", "edge")
    headers = properties.headers or {}
    assert (headers[CPU_HEADER], headers[AGAIN_HEADER]) == ("1.750000", 1)
    assert result_costs(headers, 2) == (1.75, 1)
    for forged, expected in (
        ({CPU_HEADER: "1e300", AGAIN_HEADER: 10**9}, (MAX_CLAIMED_CPU_S, 2)),
        ({CPU_HEADER: "nan", AGAIN_HEADER: True}, (0.0, 0)),
        ({CPU_HEADER: "-5", AGAIN_HEADER: -3}, (0.0, 0)),
        ({CPU_HEADER: b"12", AGAIN_HEADER: "1"}, (0.0, 0)),
        (None, (0.0, 0)),
    ):
        assert result_costs(forged, 2) == expected, forged
    tally = JobTally(JOB)
    tally.add(outcomes, 100, 0.0, "edge", result_costs(headers, 2))
    timed = [
        Outcome(task_id(JOB, 0), True, 0, wall_s=0.25),
        Outcome(task_id(JOB, 1), True, 0, wall_s=0.75),
    ]
    _body, properties = encode_outcomes(timed, "batch-2")
    assert result_wall_s(properties.headers, 2) == 0.5  # each call's share, for a map's sizer
    assert result_wall_s({WALL_HEADER: "inf"}, 2) == result_wall_s(None, 2) == 0.0
    tally.add([Outcome(task_id(JOB, 0), True, 0)], 50, 1.0, "ninja", (0.25, 0))  # ran twice
    assert (tally.cpu_s, tally.redelivered, tally.duplicates) == (2.0, 1, 1)
    end = JobEnded(namespace="alice", job_id=JOB, state="done", done=1, failed=1, duplicates=1,
                   stored_bytes=150, at=utc_now(), cpu_s=2.0, redelivered=1)  # fmt: skip
    state = state_after(submit(2), end)
    job = state.jobs[("alice", JOB)]
    assert (job.cpu_s, job.redelivered) == (2.0, 1)
    assert state_after(state.snapshot()).jobs[("alice", JOB)] == job


def test_the_rate_is_over_the_last_minute() -> None:
    tally = JobTally(JOB)
    for index in range(120):
        tally.add([Outcome(task_id(JOB, index), True)], 1, now_s=index * 1.0)
    assert tally.rate_per_s(119.0) == 1.0  # 60 in the last 60 s
    assert tally.rate_per_s(119.0 + RATE_WINDOW_S + 1) == 0.0
    assert JobTally(JOB).rate_per_s(5.0) == 0.0


def test_task_ids_are_read_back_only_for_their_own_job() -> None:
    assert task_index(JOB, task_id(JOB, 1234)) == 1234
    for other in (f"{JOB}.", f"{JOB}.x", f"{JOB}.-1", f"{JOB}.1.2", f"{JOB}.{10**9}", JOB, "x.1"):
        assert task_index(JOB, other) is None, other
    assert all(re.fullmatch(JOB_ID_PATTERN, new_job_id()) for _ in range(100))
    assert len({new_job_id() for _ in range(1000)}) == 1000
