"""The worker image a site ships, run by testcontainers as a plain container: with nothing
of the agent around it, it serves an app's tasks from the real broker.

The image is the one ``make demo`` and the Docker runtime use (``idlecloud.dev.image``,
built on this machine: nothing can be pulled), run as the runtime runs replicas: host
network, the unprivileged user, every capability dropped. testcontainers' reaper (Ryuk)
is an image from a registry, so it is off; the container is stopped and removed by the
``with`` block.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer

from bus.connection import Bus
from bus.sdk import TaskClient
from examples.vector.tasks import add, app
from idlecloud.dev.image import WORKER_APP_DIR, worker_image
from idlecloud.dev.services import BrokerInfo
from nodeagent.runtime import DOCKER_USER

ROOT = Path(__file__).resolve().parent.parent


async def test_the_worker_image_serves_tasks_in_a_plain_container(broker: BrokerInfo) -> None:
    """`bus worker examples.vector.tasks:app` inside the image answers 20 calls right."""
    testcontainers_config.ryuk_disabled = True
    image = await asyncio.to_thread(worker_image, ROOT / "examples")
    container = (
        DockerContainer(image)
        .with_command(["bus", "worker", "examples.vector.tasks:app", "-c", "2"])
        .with_env("IDLECLOUD_URL", broker.url)
        .with_env("PYTHONPATH", str(WORKER_APP_DIR))
        .with_kwargs(
            network_mode="host",
            user=DOCKER_USER,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
        )
    )
    with container:
        async with (
            Bus(broker.url, connection_name="worker image test") as bus,
            TaskClient(bus, app) as client,
        ):
            calls = [client.call(add, [float(i), 1.0], [2.0, float(i)]) for i in range(20)]
            results = await asyncio.wait_for(asyncio.gather(*calls), timeout=120)
        assert results == [[i + 2.0, 1.0 + i] for i in range(20)]
        config = container.get_wrapped_container().attrs["Config"]
        assert config["User"] == DOCKER_USER and config["Image"] == image
