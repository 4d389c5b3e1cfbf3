"""The jobs test's app, as replicas serve it: `bus worker tests.programs.job_app:app`,
with IDLECLOUD_NAMESPACE and IDLECLOUD_APP set (the agent sets them for a replica)."""

import time

from bus.sdk import App

app = App(prefetch=2)


@app.task(executor="thread")
def slow_square(x: int, seconds: float) -> int:
    """x squared, after ``seconds`` of work."""
    time.sleep(seconds)
    return x * x
