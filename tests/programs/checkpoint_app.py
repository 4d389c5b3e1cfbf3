"""The checkpoint tests' app, as replicas serve it: `bus worker tests.programs.checkpoint_app:app`.

``count`` computes ``units`` units of work, each ``unit_s`` seconds of this process's CPU,
saving how many are done at most every 3 s. Each unit it finishes is appended to
``ledger`` as ``<PC> <unit>``: the test counts from it the units computed twice (after an
eviction, from the last checkpoint on). The ledger is the test's instrument, not the
task's state: the state is only in the checkpoint. ``plain`` is the same work without
checkpoints.
"""

import os
import time
from pathlib import Path

from bus.sdk import App, TaskContext

app = App(prefetch=1)


def _spin(cpu_s: float) -> None:
    until = time.process_time() + cpu_s
    while time.process_time() < until:
        sum(range(1000))


@app.task(checkpoint_s=3, executor="process")
def count(ctx: TaskContext, units: int, unit_s: float, ledger: str) -> dict[str, int]:
    """``units`` units of CPU work, resumed from the last checkpoint."""
    start = ctx.restored or 0
    node = os.environ.get("IDLECLOUD_NODE", "here")
    for unit in range(start, units):
        _spin(unit_s)
        with Path(ledger).open("a") as out:
            out.write(f"{node} {unit}\n")
        ctx.checkpoint(unit + 1)
    return {"units": units, "resumed_at": start, "saves": ctx.saves}


@app.task(executor="process")
def plain(units: int, unit_s: float, ledger: str) -> dict[str, int]:
    """``units`` units of CPU work and no checkpoint: an eviction loses all of it."""
    node = os.environ.get("IDLECLOUD_NODE", "here")
    for unit in range(units):
        _spin(unit_s)
        with Path(ledger).open("a") as out:
            out.write(f"{node} {unit}\n")
    return {"units": units}
