"""`bus worker` for the SDK tests' app (:mod:`tests.programs.sdk_app`), as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import psutil

from bus.sdk import App
from idlecloud.dev.services import BrokerInfo

__all__ = ["WorkerProcess"]

ROOT = Path(__file__).resolve().parent.parent
TARGET = "tests.programs.sdk_app:app"


class WorkerProcess:
    """`bus worker` for the test app, as a real process."""

    def __init__(self, broker: BrokerInfo, app: App, concurrency: int = 2) -> None:
        self.broker, self.app, self.concurrency = broker, app, concurrency
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> WorkerProcess:
        env = {
            **os.environ,
            "IDLECLOUD_NAMESPACE": self.app.namespace,
            "IDLECLOUD_APP": self.app.app,
            "IDLECLOUD_URL": self.broker.url,
        }
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "idlecloud", "worker", TARGET, "-c", str(self.concurrency),
            "--grace", "5", cwd=ROOT, env=env,
        )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children()

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signum)
        return await asyncio.wait_for(self.process.wait(), timeout=30)
