"""`make demo`: the thesis's 3D reconstruction on a whole desktop cloud on this machine.

It starts RabbitMQ and InfluxDB, runs ``bus up`` (quota manager, placement, auth service,
gateway, metrics writer) on a vhost of its own, starts the thesis's four PCs (Edge,
Ninja, Jonathan, Penguin) as real agents with ``bus sim``, issues an admin key and a
researcher's key (alice, with a quota), deploys the stereo worker with ``bus deploy`` and
runs the job from alice's script. Halfway through, a person logs in at Edge (a real utmp
record): the agent freezes its replicas at once, placement cordons Edge and starts
replacements elsewhere, then the person leaves and Edge is used again. It ends with a
summary, the report's plots and the point cloud, stops everything it started, and exits 0
only if every task was done, a replica was evicted and rescheduled, and the
reconstruction is within its bound.

    python -m examples.stereo.demo [--pairs 64] [--runtime process|docker] [--out demo-out]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from bus.connection import Bus
from bus.sdk import App, TaskClient, connect_app
from bus.topology import declare_platform
from examples.stereo.client import Job, JobReport, reconstruct
from examples.stereo.reconstruct import ACCURACY_BOUND
from examples.stereo.watch import Watch, screen
from idlecloud.dev.influx import ensure_influxdb, influx_query
from idlecloud.dev.services import (
    BrokerInfo,
    DevServiceError,
    create_vhost,
    delete_vhost,
    ensure_rabbitmq,
    free_port,
)
from nodeagent.sim import THESIS_NODES, SimNode, Simulation
from services.auth.tokens import SigningKey, mint_api_key

__all__ = ["DemoSettings", "main", "run_demo"]

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE, APP, DATABASE = "alice", "stereo", "idlecloud_demo"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs, where, and when the person comes and goes."""

    job: Job = field(default_factory=Job)
    replicas: int = 15
    runtime: str = "process"
    out: Path = Path("demo-out")
    pcs: tuple[SimNode, ...] = THESIS_NODES
    person_at: str = "edge"
    login_at_share: float = 0.5  # of the tasks done
    #: at most; the person leaves sooner once 80 % of the tasks are done and a paused
    #: replica was both replaced and evicted (a replica holding seconds of unsaved work
    #: stays paused that long first), or when the job ends
    stay_s: float = 12.0
    continue_idle_s: float = 3.0
    live: bool | None = None  # a live view; default when stdout is a terminal


class Demo:
    """One run of the demo; see the module's header."""

    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        self.console = Console()
        self.out = settings.out.resolve()
        self.logs = self.out / "logs"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.broker: BrokerInfo | None = None
        self.simulation = Simulation(self.out / "sim")
        self.live = self.console.is_terminal if settings.live is None else settings.live
        self.watch = Watch(NAMESPACE, APP, settings.person_at, settings.job.tasks, self.console,
                           self.live)  # fmt: skip

    @property
    def url(self) -> str:
        """The demo's vhost on the broker."""
        assert self.broker is not None, "the platform is not up yet"
        return self.broker.url

    def step(self, what: str) -> None:
        self.watch.phase = what
        self.watch.note(what)

    # ---- bringing the platform up --------------------------------------------------

    def spawn(self, name: str, *command: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.processes.append(subprocess.Popen(
            [sys.executable, "-m", "idlecloud", *command], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=ROOT,
        ))  # fmt: skip
        log.close()

    def bus_cli(self, *command: str, key: str) -> str:
        """A `bus` command as someone holding ``key``; its standard output."""
        done = subprocess.run(
            [sys.executable, "-m", "idlecloud", *command], capture_output=True, text=True, cwd=ROOT,
            env={**os.environ, "IDLECLOUD_API_KEY": key, "IDLECLOUD_AUTH_URL": self.auth_url,
                 "IDLECLOUD_URL": self.url}, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"bus {' '.join(command[:2])} failed: {done.stderr.strip()}")
        return done.stdout

    def platform_up(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.step("starting RabbitMQ and InfluxDB")
        ensure_rabbitmq()
        ensure_influxdb()
        if self.settings.runtime == "docker":
            from idlecloud.dev.docker import ensure_docker

            ensure_docker()
        influx_query(f'DROP DATABASE "{DATABASE}"')
        influx_query(f'CREATE DATABASE "{DATABASE}"')
        self.broker = create_vhost(f"demo-{uuid.uuid4().hex[:8]}")
        key = SigningKey.generate()
        private, _public = key.save(self.out / "keys")
        self.auth_url = f"http://127.0.0.1:{free_port()}"
        self.gateway_url = f"http://127.0.0.1:{free_port()}"
        self.step("bus up: quota manager, placement, auth service, gateway, metrics writer")
        self.spawn("bus-up", "up", "--url", self.url, "--auth-key-file", str(private),
                   "--auth-port", self.auth_url.rsplit(":", 1)[1],
                   "--gateway-port", self.gateway_url.rsplit(":", 1)[1],
                   "--influx-db", DATABASE)  # fmt: skip
        self.admin_key = mint_api_key(key, "admin", "root", name="the demo")[1]
        self.alice_key = self._issue_alice()
        self.step(f"bus sim: {', '.join(pc.name for pc in self.settings.pcs)} as real agents")
        self.simulation.up(self.url, self.settings.pcs, runtime=self.settings.runtime,
                           extra_args=("--start-idle-s", "0", "--continue-idle-s",
                                       str(self.settings.continue_idle_s), "--max-suspend-s",
                                       "120", "--metrics-s", "2"))  # fmt: skip

    def _issue_alice(self) -> str:
        quota_cpu = 1000 * (self.settings.replicas + 1)
        self.bus_cli("status", "--wait", "50", "--service", "quota", "--service", "placement",
                     "--service", "auth", key=self.admin_key)  # fmt: skip
        issued = self.bus_cli("token", "issue", "--role", "user", "--subject", NAMESPACE,
                              "--name", "alice, a researcher", "--cpu-millicores",
                              str(quota_cpu), "--memory-mib", "32768", "--json",
                              key=self.admin_key)  # fmt: skip
        self.watch.note(f"keys: an admin's, and alice's with a quota of {quota_cpu // 1000} cores")
        return str(json.loads(issued)["api_key"])

    def deploy(self) -> None:
        if self.settings.runtime == "docker":
            from idlecloud.dev.image import WORKER_APP_DIR, worker_image

            image, pythonpath = worker_image(ROOT / "examples"), str(WORKER_APP_DIR)
            command = ["bus", "worker", "examples.stereo.tasks:app", "-c", "1"]
        else:
            image, pythonpath = "local", str(ROOT)
            command = [sys.executable, "-m", "idlecloud", "worker", "examples.stereo.tasks:app",
                       "-c", "1"]  # fmt: skip
        self.step(f"bus deploy: {self.settings.replicas} stereo workers of 1 core ({image})")
        arguments = [part for word in command for part in ("--command", word)]
        self.bus_cli("deploy", APP, "-n", NAMESPACE, "--image", image, "--replicas",
                     str(self.settings.replicas), "--cpu-millicores", "1000", "--memory-mib",
                     "1024", "--env", f"PYTHONPATH={pythonpath}", *arguments,
                     key=self.alice_key)  # fmt: skip

    # ---- the job, and the person ---------------------------------------------------

    async def person(self) -> None:
        """Sit down at a PC halfway through the job, and leave again."""
        settings, watch = self.settings, self.watch
        await watch.until(lambda: watch.done >= settings.login_at_share * watch.total_tasks)
        watch.login_at = time.time()
        self.simulation.login(settings.person_at)
        self.step(f"a person logs in at {settings.person_at} (a utmp record)")
        try:
            await watch.until(lambda: watch.done >= 0.8 * watch.total_tasks
                              and bool(watch.rescheduled) and bool(watch.evicted),
                              timeout_s=settings.stay_s)  # fmt: skip
        finally:  # also when the job ends first
            watch.logout_at = time.time()
            self.simulation.logout(settings.person_at)
            self.step(f"the person leaves {settings.person_at}")

    async def job(self) -> JobReport:
        os.environ.update(IDLECLOUD_API_KEY=self.alice_key, IDLECLOUD_AUTH_URL=self.auth_url)
        app = App(NAMESPACE, APP, url=self.url)
        bus = await connect_app(app, "alice's stereo job")
        try:
            async with TaskClient(bus, app) as client:
                self.step(f"alice's job: {self.settings.job.pairs} stereo pairs in "
                          f"{self.settings.job.tasks} tasks")  # fmt: skip

                def on_result(done: int) -> None:
                    self.watch.progress(done)
                    if not self.live and done % max(1, self.watch.total_tasks // 10) == 0:
                        self.watch.note(f"{done}/{self.watch.total_tasks} tasks done")

                person = asyncio.create_task(self.person())
                ply = self.out / "cloud.ply"
                report = await reconstruct(client, self.settings.job, ply, on_result=on_result,
                                           progress=False)  # fmt: skip
                person.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await person
                return report
        finally:
            await bus.close()

    async def run(self) -> int:
        """The whole demo; its exit status. SIGTERM, like Ctrl-C, stops what it started."""
        main = asyncio.current_task()
        assert main is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
        started = time.monotonic()
        with self.view():
            try:
                await asyncio.to_thread(self.platform_up)
                async with Bus(self.url, connection_name="demo console") as bus:
                    await declare_platform(bus)
                    await self.watch.start(bus)
                    await asyncio.to_thread(self.deploy)
                    report = await self.job()
                    await asyncio.sleep(self.settings.continue_idle_s + 3)  # Edge back in use
                    await self.watch.stop()
                self.step("writing the report's plots")
                await asyncio.to_thread(self.report, time.monotonic() - started)
            finally:
                self.step("stopping everything the demo started")
                await asyncio.to_thread(self.down)
        return self.summary(report, time.monotonic() - started)

    def view(self) -> contextlib.AbstractContextManager[object]:
        """The live view, redrawn four times a second, on a terminal; nothing elsewhere."""
        if not self.live:
            return contextlib.nullcontext()
        return Live(get_renderable=lambda: screen(self.watch), console=self.console,
                    refresh_per_second=4)  # fmt: skip

    def report(self, elapsed_s: float) -> None:
        minutes = int(elapsed_s // 60) + 2
        self.bus_cli("report", "--since", f"{minutes}m", "--out", str(self.out / "report"),
                     "--influx-db", DATABASE, key=self.admin_key)  # fmt: skip

    def down(self) -> None:
        self.simulation.down(grace_s=5.0)
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.broker is not None:
            delete_vhost(self.broker.vhost)

    # ---- the end -------------------------------------------------------------------

    def summary(self, report: JobReport, total_s: float) -> int:
        watch = self.watch
        latency = (f"{1000 * (watch.busy_seen_at - watch.login_at):.0f} ms"
                   if watch.busy_seen_at and watch.login_at else "not seen")  # fmt: skip
        back = (f"{watch.used_again_at - watch.logout_at:.1f} s after the logout"
                if watch.used_again_at and watch.logout_at else "not seen")  # fmt: skip
        left = self.simulation.left_behind(pc.name for pc in self.settings.pcs)
        for leftover in left:
            self.console.print(f"[red]left behind:[/] {leftover}")
        checks = {
            "every task done": watch.done == report.tasks,
            "nothing left behind (replica groups, processes, containers)": not left,
            "a replica evicted": bool(watch.evicted),
            "a replica rescheduled": bool(watch.rescheduled),
            f"accuracy within the bound ({ACCURACY_BOUND:.0%})": report.within_bound,
        }
        table = Table("", "", title="idlecloud demo: summary", show_header=False)
        for name, value in (
            ("tasks", f"{watch.done}/{report.tasks} ({report.pairs} stereo pairs)"),
            ("job duration", f"{report.duration_s:.1f} s ({report.cpu_s / 60:.1f} CPU-minutes"
                             " of matching)"),
            ("whole demo", f"{total_s:.0f} s"),
            ("replicas", f"{self.settings.replicas} x 1 core on {len(self.settings.pcs)} PCs "
                         f"({self.settings.runtime} runtime)"),
            (f"person at {self.settings.person_at}", f"{len(watch.paused)} replicas paused, "
                                                     f"{len(watch.evicted)} evicted"),
            ("rescheduled elsewhere", str(len(watch.rescheduled))),
            ("login to frozen, busy", latency),
            (f"{self.settings.person_at} used again", back),
            ("reconstruction", f"{report.accuracy:.2%} of pixels within 1 disparity level "
                               f"(bound {ACCURACY_BOUND:.0%})"),
            ("point cloud", f"{report.points:,} points in {report.ply}"),
            ("plots", str(self.out / "report")),
        ):  # fmt: skip
            table.add_row(name, value)
        for name, ok in checks.items():
            table.add_row(name, "[green]yes[/]" if ok else "[red]NO[/]")
        self.console.print(table)
        return 0 if all(checks.values()) else 1


def run_demo(settings: DemoSettings) -> int:
    """Run the demo; its exit status."""
    return asyncio.run(Demo(settings).run())


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def main() -> None:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=_positive, default=Job.pairs,
                        help="stereo pairs (4 tasks each)")  # fmt: skip
    parser.add_argument("--replicas", type=_positive, default=DemoSettings.replicas)
    parser.add_argument("--runtime", choices=("process", "docker"),
                        default=os.environ.get("RUNTIME") or "process")  # fmt: skip
    parser.add_argument("--out", type=Path, default=DemoSettings.out)
    arguments = parser.parse_args()
    settings = DemoSettings(Job(pairs=arguments.pairs), arguments.replicas, arguments.runtime,
                            arguments.out)  # fmt: skip
    try:
        raise SystemExit(run_demo(settings))
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise SystemExit("demo: interrupted; everything it started was stopped") from None
    except (DevServiceError, RuntimeError) as error:
        raise SystemExit(f"demo: {error}\n(the logs are in {settings.out / 'logs'})") from None


if __name__ == "__main__":
    main()
