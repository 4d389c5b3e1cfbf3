"""The README's examples run as a newcomer would run them: real processes, real broker."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from idlecloud.dev.services import BrokerInfo

ROOT = Path(__file__).resolve().parent.parent


async def test_the_vector_add_example_runs_with_the_sync_api(broker: BrokerInfo) -> None:
    """`bus worker examples.vector.tasks:app` serves; the client uses .map and .delay().get()."""
    env = {**os.environ, "IDLECLOUD_URL": broker.url}
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "idlecloud", "worker", "examples.vector.tasks:app", "-c", "2",
        cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "examples.vector.client",
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(client.communicate(), timeout=90)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), timeout=30) == 0
    assert client.returncode == 0
    assert b"added two vectors of 100000 elements in 100 tasks" in output
    assert b"one more, the Celery way: [4, 6]" in output
