"""The jobs test's app, as replicas serve it: `bus worker tests.programs.job_app:app`,
with IDLECLOUD_NAMESPACE and IDLECLOUD_APP set (the agent sets them for a replica)."""

import time
from collections.abc import Iterator

from bus.sdk import App

app = App(prefetch=2)


@app.task(executor="thread")
def slow_square(x: int, seconds: float) -> int:
    """x squared, after ``seconds`` of work."""
    time.sleep(seconds)
    return x * x


def quick_inputs() -> Iterator[tuple[int, float]]:
    """2,000 calls that take no time, from a generator (its length unknown up front)."""
    for x in range(2000):
        yield x, 0.0
