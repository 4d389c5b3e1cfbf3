"""A paused replica holding long unsaved work is kept paused, not evicted, while the
person may leave soon: on simulated PCs with real utmp logins, real agents, placement
and replicas running ``tests.programs.checkpoint_app``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bus.sdk import TaskClient
from schemas import ReplicaState
from services.jobs.service import JobSettings
from services.placement.service import Placement

from .control_plane import control_plane, deploy_checkpoint_app, thesis_pcs
from .helpers import ledger_by_pc, wait_until


@pytest.mark.timeout(240)
async def test_a_replica_with_long_unsaved_work_waits_paused_and_resumes_losing_nothing(
    unique: str, tmp_path: Path, ledger: Path
) -> None:
    """One call of 16 units of 1 CPU-second and no checkpoint. After 8 units a person
    logs in at its PC: the agent freezes the replica and reads that it holds about 8 s of
    unsaved work, placement starts a replacement elsewhere and, the replacement running,
    keeps the frozen one paused instead of evicting it. The person leaves 3 s later; the
    replica resumes and finishes: every unit computed once, on that one PC, one result,
    nothing handed out again."""
    pcs = thesis_pcs(unique)
    async with control_plane(tmp_path, pcs, jobs=JobSettings()) as plane:
        await plane.quota("alice", 4000)
        app = await deploy_checkpoint_app(plane, 1)
        placement = next(s for s in plane.services if isinstance(s, Placement))
        async with TaskClient(plane.bus, app) as client:
            job = await client.submit_job(app.tasks["plain"], [(16, 1.0, str(ledger))])
            await wait_until(lambda: len(ledger_by_pc(ledger)) >= 8, 120, "8 units done")
            pc = ledger_by_pc(ledger)[-1][0]
            plane.simulation.login(pc)

            def paused_there() -> list[float | None]:
                node = placement.registry.nodes[pc]
                return [r.unsaved_s for r in node.replicas.values()
                        if r.state is ReplicaState.PAUSED]  # fmt: skip

            # the heartbeat sent as it froze says what it holds, before its PC's presence
            await wait_until(lambda: bool(paused_there()), 20, "the frozen replica reported")
            (unsaved_s,) = paused_there()
            assert unsaved_s is not None and 7.0 <= unsaved_s <= 30.0, unsaved_s
            await wait_until(lambda: await_running(placement, pc), 20, "the replacement")
            await asyncio.sleep(3.0)
            assert paused_there() == [unsaved_s]  # kept: its replacement runs, it waits
            plane.simulation.logout(pc)
            view = await asyncio.wait_for(job.wait(poll_s=0.5), 120)
            results = [outcome async for _index, outcome in job.results()]
    computed = ledger_by_pc(ledger)
    assert computed == [(pc, unit) for unit in range(16)]  # once each, all on that PC
    assert (view.state, view.done, view.duplicates, view.redelivered) == ("done", 1, 0, 0)
    assert [outcome.value for outcome in results] == [{"units": 16}]
    print(f"kept paused with {unsaved_s:.1f} s of unsaved work; 16 units computed once")


def await_running(placement: Placement, busy_pc: str) -> bool:
    """A replica of the app runs on another PC than ``busy_pc``."""
    return any(
        replica.state is ReplicaState.RUNNING
        for name, node in placement.registry.nodes.items() if name != busy_pc
        for replica in node.replicas.values()
    )  # fmt: skip
