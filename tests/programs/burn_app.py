"""The usage test's app, as replicas serve it: `bus worker tests.programs.burn_app:app`.

Each call spins the CPU and answers with its process's id and the CPU time that process
has used since it started (``time.process_time()``): the test's own measure of what the
replicas used, independent of the agents' samples.
"""

import os
import time

from bus.sdk import App

app = App(prefetch=1)


@app.task(executor="inline")
def burn(cpu_s: float) -> dict[str, float]:
    """Use ``cpu_s`` seconds of CPU here; this process's id and CPU time so far."""
    until = time.process_time() + cpu_s
    while time.process_time() < until:
        sum(range(1000))
    return {"pid": os.getpid(), "process_cpu_s": time.process_time()}
