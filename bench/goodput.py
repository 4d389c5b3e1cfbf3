"""Goodput of long tasks on lab PCs that people use all day: with checkpoints and without.

Simulated PCs (real agents, placement, quota and jobs services in this process, replicas
as real processes under CPU quotas, on a broker started with the helper the tests use)
play a teaching lab's day (``nodeagent.logintrace``: class blocks plus walk-ins, seeded),
compressed in time: each session is a real utmp login and logout on its PC. A job of
long calls (``tests.programs.checkpoint_app``: units of CPU work, with ``count`` saving a
checkpoint every 3 s, ``plain`` without) runs through the day; for each seed the same
trace is played twice, once per mode. It prints, per run and as the mean of the seeds:

- goodput: CPU-seconds of work that ended in a result over CPU-seconds the replicas
  consumed (their control groups' counters, from the agents' metric samples every 0.5 s:
  worker start-up and idling count as consumed);
- work goodput: the same over the units of work computed (redone units count twice);
- makespan from the job's submission, and the capacity-integral bound: the earliest
  moment the job's work fits in the free PCs' quotas (at most one replica on each of
  ``--replicas`` PCs), which no schedule beats; time replicas spend kept paused counts in
  the makespan;
- calls started again from nothing, and units computed twice;
- an estimate of the goodput in the lab's own time (``lab_goodput``): the work scales
  with the compression, while a replica's start-up (about 0.5 CPU-s,
  ``bench/worker_start.py``: two Python processes importing the SDK) costs the same, so
  it is divided by the compression.

Counting on a 2-core machine: each PC offers ``--cpu-millicores`` (300) and runs at most
one replica, capped there by its control group, and ``--replicas`` (4) replicas run at
most: 1.2 cores of replica work, leaving the rest of the machine to the agents, the
services and the broker, so a CPU-second of work is one whichever PC computes it.

Defaults: 6 PCs, a 10-hour day compressed 100 times (6 minutes), 8 calls of 27 units of
0.5 CPU-s (13.5 CPU-s, 45 s at the PC's 0.3 cores: 75 minutes of lab time, a little longer
than the mean gap between logins, 47-64 minutes), two rounds on the 4 replicas, the
agents' and placement's timers compressed alike (``max_suspend_s`` 600 s becomes 6 s;
the kept-paused cap 300 s becomes 3 s). Time that does not compress (a replica's start,
about half a CPU-second) weighs 100 times more than in a real lab.

Usage: python bench/goodput.py [--seeds 1 2 3] [--pcs 6] [--replicas 4] [--calls 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bus import names  # noqa: E402
from bus.codec import Delivery  # noqa: E402
from bus.consumer import Consumer  # noqa: E402
from bus.sdk import TaskClient  # noqa: E402
from bus.topology import QueueSpec  # noqa: E402
from nodeagent.logintrace import LabDay, Session, capacity_bound_s, trace  # noqa: E402
from nodeagent.sim import SimNode, Simulation  # noqa: E402
from schemas import MetricSample  # noqa: E402
from services.jobs.service import JobSettings  # noqa: E402
from services.placement.reconciler import ReconcilerSettings  # noqa: E402
from tests.control_plane import AGENT_ARGS, FAST, control_plane, deploy_checkpoint_app  # noqa: E402
from tests.helpers import ledger_by_pc  # noqa: E402

MODES = {"checkpoints": "count", "none": "plain"}


@dataclass(frozen=True, slots=True)
class Run:
    """One mode's run on one seed's trace."""

    mode: str
    seed: int
    makespan_s: float
    bound_s: float
    useful_cpu_s: float
    consumed_cpu_s: float
    computed_cpu_s: float
    restarted: int
    redone_units: int
    replicas_started: int
    compress: float

    @property
    def goodput(self) -> float:
        return self.useful_cpu_s / self.consumed_cpu_s

    @property
    def work_goodput(self) -> float:
        return self.useful_cpu_s / self.computed_cpu_s

    @property
    def overhead_per_start_s(self) -> float:
        """CPU a replica spent on anything but units of work (start-up, idling), each."""
        return (self.consumed_cpu_s - self.computed_cpu_s) / max(1, self.replicas_started)

    @property
    def lab_goodput(self) -> float:
        """An estimate of the goodput in the lab's own time: the work scales with the
        compression, while a replica's start-up costs the same CPU."""
        start_up_s = self.consumed_cpu_s - self.computed_cpu_s
        return self.useful_cpu_s / (self.computed_cpu_s + start_up_s / self.compress)


async def play(simulation: Simulation, sessions: list[Session], t0: float) -> None:
    """Log people in and out at their sessions' times (from ``t0``, monotonic)."""
    events = sorted(
        [(s.start_s, 1, s.pc) for s in sessions] + [(s.end_s, 0, s.pc) for s in sessions]
    )
    for at, login, pc in events:
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        (simulation.login if login else simulation.logout)(pc)


async def run(mode: str, seed: int, options: argparse.Namespace) -> Run:
    """Play seed ``seed``'s day with the job's calls in ``mode``."""
    suffix = uuid.uuid4().hex[:6]
    pcs = tuple(SimNode(f"pc{i}{suffix}", options.cpu_millicores, 2048) for i in range(options.pcs))
    names_ = [pc.name for pc in pcs]
    day = LabDay()
    compress = options.compress
    sessions = trace(names_, day, seed, compress)
    day_s = day.day_h * 3600 / compress
    cores = options.cpu_millicores / 1000
    useful_cpu_s = options.calls * options.units * options.unit_s
    bound_s = capacity_bound_s(sessions, names_, useful_cpu_s, cores, day_s, options.replicas)
    if bound_s is None:
        raise SystemExit(f"seed {seed}: the day's free capacity cannot hold the job")
    shared = Path(tempfile.mkdtemp(prefix=f"goodput-{mode}-{seed}-"))
    os.chmod(shared, 0o711)
    for index in range(options.calls):  # each call's ledger, which replicas of any uid append to
        ledger = shared / f"call{index}"
        ledger.touch()
        ledger.chmod(0o666)
    agent_args = (*AGENT_ARGS, "--max-suspend-s", f"{600 / compress:g}", "--metrics-s", "0.5")
    reconciler = ReconcilerSettings(
        preempt_interval_s=2.0, keep_paused_max_s=300 / compress, evict_below_s=5 / compress
    )
    placement = replace(FAST, reconciler=reconciler)
    cpu_s: dict[str, float] = {}

    async def on_sample(sample: MetricSample, _delivery: Delivery) -> None:
        for replica in sample.replicas:
            key = f"{sample.node}/{replica.replica_id}"
            cpu_s[key] = max(cpu_s.get(key, 0.0), replica.cpu_s)

    work = Path(tempfile.mkdtemp(prefix="goodput-plane-"))
    async with control_plane(work, pcs, settings=placement, agent_args=agent_args,
                             jobs=JobSettings()) as plane:  # fmt: skip
        tap = Consumer(
            QueueSpec.private(f"bench.goodput.{suffix}",
                              (names.EVENTS_EXCHANGE, names.metrics_event_keys()[0])),
            [MetricSample], on_sample, prefetch=100,
        )  # fmt: skip
        await tap.start(plane.bus)
        await plane.quota("alice", options.replicas * options.cpu_millicores)
        app = await deploy_checkpoint_app(plane, options.replicas, options.cpu_millicores)
        task = app.tasks[MODES[mode]]
        async with TaskClient(plane.bus, app) as client:
            t0 = time.monotonic()
            player = asyncio.create_task(play(plane.simulation, sessions, t0))
            calls = [
                (options.units, options.unit_s, str(shared / f"call{i}"))
                for i in range(options.calls)
            ]
            job = await client.submit_job(task, calls, name=f"goodput-{mode}-{seed}")
            view = await asyncio.wait_for(job.wait(poll_s=0.2), timeout=day_s * 3)
            makespan_s = time.monotonic() - t0
            player.cancel()
            errors = [o.error async for _i, o in job.results() if not o.ok]
            if errors:
                raise SystemExit(f"{mode}, seed {seed}: {len(errors)} calls failed: {errors[:3]}")
        await asyncio.sleep(1.5)  # the last metric samples of the replicas that ran it
        await tap.stop()
    assert (view.state, view.done) == ("done", options.calls), view
    units = [ledger_by_pc(shared / f"call{i}") for i in range(options.calls)]
    per_call = [Counter(unit for _pc, unit in ledger) for ledger in units]
    for folder in (shared, work):
        shutil.rmtree(folder, ignore_errors=True)
    return Run(
        mode,
        seed,
        makespan_s,
        bound_s,
        useful_cpu_s,
        sum(cpu_s.values()),
        sum(len(ledger) for ledger in units) * options.unit_s,
        sum(counts[0] - 1 for counts in per_call),
        sum(n - 1 for counts in per_call for n in counts.values()),
        len(cpu_s),
        options.compress,
    )


def report(runs: list[Run]) -> None:
    for r in runs:
        print(f"seed {r.seed} {r.mode:11} goodput {r.goodput:.2f} work_goodput "
              f"{r.work_goodput:.2f} makespan {r.makespan_s:.1f} s bound {r.bound_s:.1f} s "
              f"({r.makespan_s / r.bound_s:.2f}x) restarted {r.restarted} "
              f"redone_units {r.redone_units} consumed {r.consumed_cpu_s:.1f} CPU-s "
              f"computed {r.computed_cpu_s:.1f} CPU-s replicas_started {r.replicas_started} "
              f"overhead_per_start {r.overhead_per_start_s:.2f} CPU-s")  # fmt: skip
    for mode in MODES:
        mine = [r for r in runs if r.mode == mode]
        if not mine:
            continue
        print(f"{mode}_goodput_mean: {statistics.mean(r.goodput for r in mine):.2f}")
        print(f"{mode}_work_goodput_mean: {statistics.mean(r.work_goodput for r in mine):.2f}")
        print(f"{mode}_lab_goodput_estimate_mean: "
              f"{statistics.mean(r.lab_goodput for r in mine):.2f}")  # fmt: skip
        ratio = statistics.mean(r.makespan_s / r.bound_s for r in mine)
        print(f"{mode}_makespan_over_bound_mean: {ratio:.2f}")


async def main(options: argparse.Namespace) -> None:
    runs = []
    for seed in options.seeds:
        for mode in MODES:
            runs.append(await run(mode, seed, options))
            report(runs[-1:])
    print(f"runs: {len(runs)}")
    report(runs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--pcs", type=int, default=6)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--cpu-millicores", type=int, default=300)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--units", type=int, default=27)
    parser.add_argument("--unit-s", type=float, default=0.5)
    parser.add_argument("--compress", type=float, default=100.0)
    asyncio.run(main(parser.parse_args()))
