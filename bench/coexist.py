"""What replicas beside a person cost the person: coexist mode against no replicas and
against the same replicas at normal priority, in one run.

The person's work is two programs (not the platform's): a latency probe that sleeps 1 ms
and records how late it wakes, and a fixed CPU-bound job on one core, timed, which leaves
the other core idle (the probe aside). Each setting runs both at once:

- ``none``: no replicas at all (the baseline);
- ``coexist``: a real agent (`bus agent run --presence-mode coexist`, process runtime)
  with a person logged in (a utmp record) and two CPU-bound replicas of 500m each, which
  it runs at ``SCHED_IDLE`` and the lowest CPU weight within their quotas;
- ``normal``: the same two CPU-bound processes, each in a control group with the same
  500m quota, at normal priority (nice 0, ``SCHED_OTHER``, the default CPU weight of 1024);
- ``other-core``: one busy loop held on the last core (no quota, normal priority), the
  job free to run on the other: the slowdown that only sharing the hardware (caches,
  memory bandwidth, a virtual machine's host) causes, which no scheduling can remove.

Printed per setting: the job's duration and how much slower than the baseline, the
probe's wake-up delay (p50/p99/max over >= 1,000 samples) and its p99 above the
baseline's, the cores the replicas used during the job as a share of the cores the job
left idle, and (coexist) the time the replicas spent frozen. Then, in coexist mode, how
soon the agent freezes the replicas once the person's work takes both cores (two CPU
hogs; ``--freeze-trials`` times), for processes and then for containers (a second agent
with ``--runtime docker``), and whether this machine's two cores are SMT siblings.
Goals: job <= 5 % slower, probe p99 <= 2 ms above the baseline, replicas harvest >= half
of the idle CPU, freeze <= 250 ms.

The settings take turns: each round runs every one once, in another order each round,
the others' processes stopped meanwhile (this machine's job time drifts by 10 % over a
minute, so settings run one after another would compare drift). Per setting: the median
job time and replicas' cores of its ``--rounds`` runs, every probe sample pooled.

Usage: python bench/coexist.py [--rounds 5] [--job-iterations 60000000] [--freeze-trials 20]
                              [--no-docker]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.agent_rig import end_replicas, prepare, replica_pids, start_agent, starts  # noqa: E402
from bench.figures import percentile, summary  # noqa: E402
from bus.connection import Bus  # noqa: E402
from bus.topology import declare_platform  # noqa: E402
from idlecloud.dev.services import scratch_vhost  # noqa: E402
from nodeagent.runtime.cgroup import Cgroup, Mounts  # noqa: E402
from nodeagent.runtime.process import frozen  # noqa: E402
from nodeagent.utmp import write_login  # noqa: E402

NODE, REPLICAS, REPLICA_MILLICORES = "coexist-pc", 2, 500
SPIN = (sys.executable, "-c", "while True: pass")
PROBE = """
import json, signal, time
delays, stop = [], []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
while not stop:
    began = time.perf_counter()
    time.sleep(0.001)
    delays.append((time.perf_counter() - began - 0.001) * 1000)
print(json.dumps(delays))
"""
JOB = """
import sys, time
began, total = time.perf_counter(), 0
for number in range(int(sys.argv[1])):
    total += number
print(time.perf_counter() - began)
"""
MOUNTS = Mounts.read()


@dataclass(frozen=True)
class Run:
    """One setting's figures."""

    job_s: float
    delays_ms: list[float]
    replica_cores: float
    frozen_s: float


def person_env() -> dict[str, str]:
    """The person's programs are not the platform's (the `bus` command marks its own)."""
    return {key: value for key, value in os.environ.items() if key != "IDLECLOUD_PLATFORM"}


def cpu_s(pids: list[int]) -> float:
    """CPU seconds the processes used so far (a gone one counts for nothing)."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def person_works(
    iterations: int, replicas: list[int], watch: Callable[[], bool] | None
) -> Run:
    """Run the probe while the job runs; measure the replicas meanwhile."""
    env = person_env()
    probe = await asyncio.create_subprocess_exec(sys.executable, "-c", PROBE,
                                                 stdout=subprocess.PIPE, env=env)  # fmt: skip
    await asyncio.sleep(0.2)  # its interpreter started
    job = await asyncio.create_subprocess_exec(sys.executable, "-c", JOB, str(iterations),
                                               stdout=subprocess.PIPE, env=env)  # fmt: skip
    used_before, began, frozen_s = cpu_s(replicas), time.monotonic(), 0.0
    job_done = asyncio.ensure_future(job.communicate())
    while not job_done.done():
        await asyncio.sleep(0.02)
        if watch is not None and watch():
            frozen_s += 0.02
    elapsed_s = time.monotonic() - began
    replica_cores = (cpu_s(replicas) - used_before) / elapsed_s
    job_out, _ = await job_done
    probe.send_signal(signal.SIGTERM)
    probe_out, _ = await probe.communicate()
    return Run(float(job_out), json.loads(probe_out), replica_cores, frozen_s)


def report(name: str, run: Run, baseline: Run | None) -> None:
    print(f"[{name}]")
    print(f"{name}_job_s: {run.job_s:.3f}")
    for line in summary(f"{name}_probe_delay", run.delays_ms, digits=3):
        print(line)
    if baseline is None:
        return
    print(f"{name}_job_slower_percent: {(run.job_s / baseline.job_s - 1) * 100:.1f}")
    over_ms = percentile(run.delays_ms, 0.99) - percentile(baseline.delays_ms, 0.99)
    print(f"{name}_probe_p99_above_baseline_ms: {over_ms:.3f}")
    idle_cores = (os.cpu_count() or 1) - 1  # the job takes one core
    print(f"{name}_replica_cores: {run.replica_cores:.2f}")
    print(f"{name}_harvest_of_idle_cpu: {run.replica_cores / idle_cores:.2f}")


def normal_replicas() -> tuple[list[subprocess.Popen[bytes]], list[Cgroup]]:
    """The same CPU-bound replicas, with the same quota, at normal priority and weight."""
    processes, groups = [], []
    for index in range(REPLICAS):
        group = Cgroup.create(f"idlecloud-bench/normal-{os.getpid()}-{index}", MOUNTS)
        if group is None:
            raise SystemExit("this bench needs a writable cgroup tree (run it as root)")
        group.limit(REPLICA_MILLICORES, 64)
        if not group.unified:
            (group.dirs["cpu"] / "cpu.shares").write_text("1024")
        else:
            (group.dirs["cpu"] / "cpu.weight").write_text("100")
        process = subprocess.Popen(SPIN, env=person_env())
        group.join(process.pid)
        processes.append(process)
        groups.append(group)
    return processes, groups


def freeze_latencies(pids: list[int], trials: int) -> list[float]:
    """Milliseconds from two CPU hogs starting to every replica frozen, per trial (the
    agent is another process: this one may block)."""
    latencies = []
    for _ in range(trials):
        while any(frozen(pid, MOUNTS) for pid in pids):  # thaws after thaw_after_s of calm
            time.sleep(0.05)
        time.sleep(0.5)
        hogs = [subprocess.Popen(SPIN, env=person_env()) for _ in range(2)]
        began = time.monotonic()
        while not all(frozen(pid, MOUNTS) for pid in pids):
            if time.monotonic() - began > 10:
                raise SystemExit("the replicas were not frozen within 10 s of the hogs")
            time.sleep(0.002)
        latencies.append((time.monotonic() - began) * 1000)
        for hog in hogs:
            hog.kill()
            hog.wait()
    return latencies


def smt_siblings() -> bool:
    """Whether any core shares its physical core with another (hyper-threading)."""
    topology = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list")
    text = topology.read_text().strip() if topology.exists() else "0"
    return "," in text or "-" in text


@contextlib.asynccontextmanager
async def coexisting_replicas(url: str, runtime: str = "process") -> AsyncIterator[list[int]]:
    """A real agent in coexist mode with a person logged in, running the two replicas;
    their pids."""
    work = Path(tempfile.mkdtemp(prefix="coexist-"))
    write_login(work / "utmp", "student", "tty7")
    agent = await start_agent(url, NODE, work, runtime, "--presence-mode", "coexist")
    try:
        async with Bus(url, connection_name="coexist bench") as bus:
            await declare_platform(bus)
            await asyncio.sleep(3)  # the agent declares its command queue
            deadline = time.monotonic() + 60
            while len(pids := replica_pids(NODE, work, runtime)) < REPLICAS:
                if time.monotonic() > deadline:
                    raise SystemExit("the agent did not start the replicas within 60 s")
                # again every 5 s (a start is idempotent): a PC frozen for a moment (the
                # person's cores busy, e.g. with dockerd) refuses starts meanwhile
                for command in starts(NODE, runtime, REPLICAS, busy=True,
                                      cpu_millicores=REPLICA_MILLICORES):  # fmt: skip
                    await bus.publish(command)
                await asyncio.sleep(5)
        await asyncio.sleep(2)  # settle
        yield pids
    finally:
        agent.send_signal(signal.SIGTERM)
        await agent.wait()
        end_replicas(NODE, work, runtime)


@dataclass
class Setting:
    """One setting's processes beside the person's work, and its runs."""

    name: str
    pids: list[int]
    watch: Callable[[], bool] | None = None
    runs: list[Run] = field(default_factory=list)

    def hold(self, held: bool) -> None:
        """Stop its processes between its runs, or let them go on (SIGSTOP, not the
        freezer: the agent thaws what it froze, and would thaw them too)."""
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP if held else signal.SIGCONT)

    def summed(self) -> Run:
        """Its runs as one: the median job time and replicas' cores, every probe sample,
        the frozen time summed."""
        return Run(
            statistics.median(run.job_s for run in self.runs),
            [delay for run in self.runs for delay in run.delays_ms],
            statistics.median(run.replica_cores for run in self.runs),
            sum(run.frozen_s for run in self.runs),
        )


def other_core_loop() -> subprocess.Popen[bytes]:
    """One busy loop held on the last core, at normal priority."""
    other = subprocess.Popen(SPIN, env=person_env())
    os.sched_setaffinity(other.pid, {max(os.sched_getaffinity(0))})
    return other


async def main(url: str, rounds: int, iterations: int, trials: int, docker: bool) -> None:
    processes: list[subprocess.Popen[bytes]] = []
    groups: list[Cgroup] = []
    try:
        async with coexisting_replicas(url) as pids:
            # started only now, and stopped at once: else the agent, seeing the person's
            # cores busy, would take no replica
            processes, groups = normal_replicas()
            normal = [process.pid for process in processes]
            processes.append(other := other_core_loop())
            settings = [
                Setting("none", []),
                Setting("coexist", pids, lambda: any(frozen(pid, MOUNTS) for pid in pids)),
                Setting("normal", normal),
                Setting("other_core", [other.pid]),
            ]
            for setting in settings:
                setting.hold(True)
            for round_ in range(rounds):  # interleaved, each round in another order
                for setting in settings[round_ % 4 :] + settings[: round_ % 4]:
                    setting.hold(False)
                    await asyncio.sleep(0.3)
                    setting.runs.append(await person_works(iterations, setting.pids, setting.watch))
                    setting.hold(True)
            settings[1].hold(False)
            latencies = {"freeze": freeze_latencies(pids, trials)}
        if docker:  # the same with containers (dockerd's pause, where processes use the freezer)
            prepare("docker")
            async with coexisting_replicas(url, "docker") as pids:
                latencies["freeze_docker"] = freeze_latencies(pids, trials)
    finally:
        for process in processes:
            process.kill()
            process.wait()
        for group in groups:
            group.remove()
    none, coexist, at_normal, pinned = (setting.summed() for setting in settings)
    print(f"cores: {os.cpu_count()}, smt_siblings: {'yes' if smt_siblings() else 'no'}, "
          f"replicas: {REPLICAS} x {REPLICA_MILLICORES}m CPU-bound, rounds: {rounds}, "
          f"interleaved")  # fmt: skip
    report("none", none, None)
    report("coexist", coexist, none)
    print(f"coexist_frozen_s: {coexist.frozen_s:.2f}")
    report("normal", at_normal, none)
    print("[other-core: one busy loop held on the last core, at normal priority: what the")
    print(" hardware the cores share (caches, memory, a host's SMT) costs the job]")
    print(f"other_core_job_slower_percent: {(pinned.job_s / none.job_s - 1) * 100:.1f}")
    print("[freeze: two CPU hogs start beside coexisting replicas, processes then containers]")
    for name, values in latencies.items():
        for line in summary(name, values, digits=0):
            print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job-iterations", type=int, default=60_000_000,
                        help="the foreground job's loop count (about 3 s here)")  # fmt: skip
    parser.add_argument("--freeze-trials", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="runs of each setting")
    parser.add_argument("--no-docker", action="store_true",
                        help="time the freeze of processes only, not containers'")  # fmt: skip
    arguments = parser.parse_args()
    with scratch_vhost("bench") as broker:
        asyncio.run(main(broker.url, arguments.rounds, arguments.job_iterations,
                         arguments.freeze_trials, not arguments.no_docker))  # fmt: skip
