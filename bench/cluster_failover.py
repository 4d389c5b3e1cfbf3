"""Seconds until the platform works again when a broker node of a three-node cluster dies
or hangs in the middle of a 10,000-task map and 50 deploys and scales.

Starts the local cluster with the helper the tests use (:mod:`idlecloud.dev.cluster`:
three ``rabbitmq-server`` processes on this machine, ``net_ticktime`` 4 s) and runs the
scenario of ``tests/cluster_rig.py`` (the control plane with production settings
but for the tests' fast ticks, four real agents, two real SDK workers) once per trial
and kind of failure: the node leading the journal stream and the task queue is killed
(SIGKILL) or hung (SIGSTOP for ``--hang-s``) after 2,000 results. Each trial prints when
every PC was heard again, when the control plane answered again, how long the map took,
how many requests were asked again, and how long the node took to rejoin.

Usage: python bench/cluster_failover.py [--trials 3] [--hang-s 60] [--kinds kill hang]
[--trial-timeout-s 300] (a trial not done by then is reported as such, and skipped)
The lines ``<kind>_pcs_heard_max_s`` and ``<kind>_serving_max_s`` are the goals' figures
(goal: <= 5 s each).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.figures import summary  # noqa: E402
from idlecloud.dev.cluster import ensure_cluster  # noqa: E402
from tests.cluster_rig import failover  # noqa: E402


async def main(trials: int, hang_s: float, kinds: list[str], trial_timeout_s: float) -> None:
    cluster = ensure_cluster(3)
    for kind in kinds:
        heard, serving = [], []
        for trial in range(trials):
            with tempfile.TemporaryDirectory(prefix="failover-") as work:
                how: Literal["kill", "hang"] = "kill" if kind == "kill" else "hang"
                try:
                    async with asyncio.timeout(trial_timeout_s):
                        run = await failover(Path(work), cluster, how, hang_s=hang_s)
                except TimeoutError:
                    print(f"{kind} trial {trial + 1}: not done in {trial_timeout_s:g} s",
                          flush=True)  # fmt: skip
                    await asyncio.to_thread(cluster.wait_whole)
                    continue
            lost = run.tasks - len(run.results)
            print(
                f"{kind} trial {trial + 1}: PCs heard again after {run.pcs_heard_s:.2f} s, "
                f"control plane answering after {run.serving_s:.2f} s, map {run.map_s:.1f} s, "
                f"{lost} tasks lost, {run.results_seen - len(run.results)} results repeated "
                f"(dropped by the client), {run.request_retries} requests asked again, "
                f"apps as asked: {run.replicas == run.expected_replicas}, rejoined after "
                f"{run.rejoin_s:.1f} s; connected to the failed node: {', '.join(run.on_victim)}",
                flush=True,
            )
            heard.append(run.pcs_heard_s or 0.0)
            serving.append(run.serving_s or 0.0)
        if heard:
            print("\n".join(summary(f"{kind}_pcs_heard", heard, "s", 2)))
            print("\n".join(summary(f"{kind}_serving", serving, "s", 2)))
        print(f"{kind}_trials_done: {len(heard)} of {trials}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--hang-s", type=float, default=60.0)
    parser.add_argument("--kinds", nargs="+", choices=["kill", "hang"], default=["kill", "hang"])
    parser.add_argument("--trial-timeout-s", type=float, default=300.0)
    arguments = parser.parse_args()
    asyncio.run(
        main(arguments.trials, arguments.hang_s, arguments.kinds, arguments.trial_timeout_s)
    )
