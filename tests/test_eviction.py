"""Eviction that respects long work, pure: the ski-rental rule, the reconciler applying it
to paused replicas, the worker's account of its unsaved work, and the agent reading it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bus.sdk.status import UnsavedWork
from nodeagent.status import StatusFolders
from schemas import QuotaSet, ReplicaState
from services.placement.eviction import keep_paused

from .test_reconciler import World, thesis_job

RULE = {"keep_paused_max_s": 300.0, "evict_below_s": 5.0}


def test_the_rule_waits_as_long_as_the_work_it_would_lose_and_no_longer() -> None:
    assert not keep_paused(None, 0.0, **RULE)  # unknown: evicted at once, as before
    assert not keep_paused(4.9, 0.0, **RULE)  # a recent checkpoint, or short calls
    assert keep_paused(60.0, 0.0, **RULE) and keep_paused(60.0, 59.9, **RULE)
    assert not keep_paused(60.0, 60.0, **RULE)  # waited as long as it would lose: evict
    assert keep_paused(3600.0, 299.0, **RULE) and not keep_paused(3600.0, 300.0, **RULE)


@pytest.mark.parametrize("person_stays_s", [1.0, 30.0, 59.0, 61.0, 600.0, 10_000.0])
def test_the_rule_costs_at_most_twice_the_best_choice_in_hindsight(person_stays_s: float) -> None:
    """Ski rental: a held call is late by the wait, plus the redone work if evicted; the
    best choice in hindsight costs min(stay, unsaved); the rule never more than twice."""
    unsaved_s = 60.0
    waited = 0.0
    while waited < person_stays_s and keep_paused(unsaved_s, waited, **RULE):
        waited += 0.5
    late = waited if waited >= person_stays_s else waited + unsaved_s
    assert late <= 2 * min(person_stays_s, unsaved_s) + 0.5


def paused_on(world: World, node: str, unsaved_s: dict[str, float | None]) -> None:
    """A person sits down at ``node``; each paused replica's agent read its unsaved work."""
    world.login(node)
    for rid, report in world.running[node].items():
        update = {"state": ReplicaState.PAUSED, "unsaved_s": unsaved_s.get(rid)}
        world.running[node][rid] = report.model_copy(update=update)


def run_replacements(world: World) -> None:
    """The reconciler starts replacements; the next tick they report running."""
    world.tick()


def test_a_paused_replica_with_long_unsaved_work_waits_and_one_with_a_checkpoint_goes() -> None:
    world = thesis_job(replicas=12)
    world.tick()
    first, second, *rest = sorted(world.running["edge"])
    paused_on(world, "edge", {first: 120.0, second: 2.0} | dict.fromkeys(rest))
    run_replacements(world)
    plan = world.tick()  # the replacements run: who goes now?
    stopped = {stop.replica_id for stop in plan.stops}
    assert first not in stopped and stopped == {second, *rest}
    assert first in world.running["edge"]  # kept paused: it uses no CPU
    assert world.tick().statuses[("alice", "stereo")].running == 12
    while first in world.running["edge"] and world.now < 200:
        world.tick(seconds=5.0)
    assert 120.0 <= world.now - 2.0 <= 130.0  # evicted once paused as long as it would lose
    assert sum(world.per_node().values()) == 12


def test_a_kept_replica_resumes_when_the_person_leaves_and_the_surplus_is_the_newest() -> None:
    world = thesis_job(replicas=4)
    world.tick()
    kept = sorted(world.running["edge"])[0]
    paused_on(world, "edge", {kept: 600.0})
    run_replacements(world)
    world.tick(seconds=10.0)
    assert kept in world.running["edge"]
    world.presence["edge"] = world.presence["ninja"]  # the person left: it resumes
    world.running["edge"] = {rid: report.model_copy(update={"state": ReplicaState.RUNNING,
                                                            "unsaved_s": None})
                             for rid, report in world.running["edge"].items()}  # fmt: skip
    plan = world.tick()
    assert kept not in {stop.replica_id for stop in plan.stops}  # the resumed one stays
    assert sum(world.per_node().values()) == 4


def test_a_paused_replica_counts_against_nothing_while_kept() -> None:
    """Kept paused, a replica is neither running nor holding its namespace's quota: its
    replacement runs within the quota, and the app's status says all desired run."""
    world = thesis_job(replicas=8, cpu=1000)
    world.journal(QuotaSet(request_id="req-quota-02", namespace="alice", cpu_millicores=8000,
                           memory_mib=65_536))  # fmt: skip
    world.tick()
    on_edge = len(world.running["edge"])
    assert on_edge >= 2
    paused_on(world, "edge", dict.fromkeys(world.running["edge"], 900.0))
    run_replacements(world)
    status = world.tick().statuses[("alice", "stereo")]
    assert (status.running, status.desired) == (8, 8)
    assert len(world.running["edge"]) == on_edge  # all still paused, none stopped


def test_the_worker_says_when_its_oldest_unsaved_work_began(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "status"
    work = UnsavedWork(path, clock=lambda: now[0])
    assert json.loads(path.read_text()) == {"unsaved_since": None}
    work.started("a")
    now[0] = 1010.0
    work.started("b")
    assert work.since == 1000.0
    now[0] = 1020.0
    work.saved("a")  # a's checkpoint stored: b's work is now the oldest unsaved
    assert json.loads(path.read_text()) == {"unsaved_since": 1010.0}
    work.ended("b")
    work.saved("b")  # a save that lands after its call ended changes nothing
    assert json.loads(path.read_text()) == {"unsaved_since": 1020.0}
    work.ended("a")
    assert json.loads(path.read_text()) == {"unsaved_since": None}
    assert [p.name for p in tmp_path.iterdir()] == ["status"]  # no staged file left


def test_new_unsaved_work_is_written_once_it_has_settled(tmp_path: Path) -> None:
    """A call that ends within the settle time costs no write; one that runs on is written
    when the timer fires, as it then stands; a cancelled timer never writes."""
    timers: list[tuple[float, Callable[[], None]]] = []
    cancelled: list[int] = []

    class Timer:
        def __init__(self, index: int) -> None:
            self.index = index

        def cancel(self) -> None:
            cancelled.append(self.index)

    def later(delay_s: float, callback: Callable[[], None]) -> Timer:
        timers.append((delay_s, callback))
        return Timer(len(timers) - 1)

    now = [1000.0]
    path = tmp_path / "status"
    work = UnsavedWork(path, clock=lambda: now[0], settle_s=1.0, later=later)
    path.unlink()  # from here on, the file exists only if it was written again
    for index in range(100):  # short calls: started and ended before their timer fires
        work.started(f"short{index}")
        work.ended(f"short{index}")
    assert not path.exists() and len(timers) == 100 and cancelled == list(range(100))
    work.started("long")
    now[0] = 1000.5
    work.saved("long")  # settling still: the timer already set writes what stands then
    assert len(timers) == 101 and not path.exists()
    assert timers[-1][0] == 1.0
    timers[-1][1]()
    assert json.loads(path.read_text()) == {"unsaved_since": 1000.5}
    now[0] = 1003.5
    work.saved("long")  # already written: a change is written at once
    assert json.loads(path.read_text()) == {"unsaved_since": 1003.5}
    work.ended("long")
    assert json.loads(path.read_text()) == {"unsaved_since": None} and len(timers) == 101


def test_the_agent_reads_a_hostile_status_file_as_unknown(tmp_path: Path) -> None:
    folders = StatusFolders(tmp_path)
    folder = folders.folder("r1")
    status = folder / "status"
    assert folders.unsaved_s("r1", 2000.0) is None  # nothing written yet
    status.write_text(json.dumps({"unsaved_since": 1900.5}))
    assert folders.unsaved_s("r1", 2000.0) == pytest.approx(99.5)
    for hostile in ('{"unsaved_since": 3000}', '{"unsaved_since": -1}', '{"unsaved_since": true}',
                    '{"unsaved_since": "1900"}', "[1900]", "not json", '{"unsaved_since": 1e999}',
                    " " * 300 + '{"unsaved_since": 1900}'):  # fmt: skip
        status.write_text(hostile)
        assert folders.unsaved_s("r1", 2000.0) is None, hostile
    status.unlink()
    status.symlink_to(tmp_path / "elsewhere")  # a link is not followed
    (tmp_path / "elsewhere").write_text(json.dumps({"unsaved_since": 1900}))
    assert folders.unsaved_s("r1", 2000.0) is None
    status.unlink()
    os.mkfifo(status)  # a FIFO does not block the agent
    assert folders.unsaved_s("r1", 2000.0) is None
    folders.remove("r1")
    assert not folder.exists()
