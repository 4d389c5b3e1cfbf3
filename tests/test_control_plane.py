"""The control plane with real agents: the thesis's experiments in compressed time.

A fresh vhost per test, the quota manager and placement in this process, and four
simulated PCs (real `bus agent run` processes, process runtime) sized like the thesis's.
A watcher samples every namespace's apps every 0.3 s and records any moment when one
ran more replicas than it asked or reserved more than its quota.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import jwt
import psutil

from bus.connection import Bus
from bus.sdk.client import TaskClient
from idlecloud.dev.services import BrokerInfo
from schemas import Owner, ScaleRequest
from services.placement.service import Placement

from .control_plane import AGENT_ARGS, FAST, SLEEPER, Plane, control_plane, thesis_pcs
from .helpers import wait_until
from .programs.sdk_tasks import make_app
from .test_cli import bus_cli


class Watcher:
    """Samples namespaces' apps; remembers every breach of desired count or quota."""

    def __init__(self, plane: Plane, namespaces: tuple[str, ...]) -> None:
        self.plane = plane
        self.namespaces = namespaces
        self.breaches: list[str] = []
        self.running: dict[str, int] = dict.fromkeys(namespaces, 0)
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            for namespace in self.namespaces:
                reply = await self.plane.apps(namespace)
                self.running[namespace] = sum(view.running for view in reply.apps)
                for view in reply.apps:
                    if view.running > view.desired:
                        self.breaches.append(
                            f"{namespace}/{view.app} {view.running}>{view.desired}"
                        )
                if reply.quota and reply.running.cpu_millicores > reply.quota.cpu_millicores:
                    self.breaches.append(f"{namespace} runs {reply.running.cpu_millicores}m")
            self.samples += 1
            await asyncio.sleep(0.3)

    def __enter__(self) -> Watcher:
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    await wait_until(predicate, timeout_s=timeout_s, what=what)


@contextlib.asynccontextmanager
async def watched(plane: Plane, *namespaces: str) -> AsyncIterator[Watcher]:
    with Watcher(plane, namespaces) as watcher:
        yield watcher
        await asyncio.sleep(0.4)  # one more sample after the last step
    assert watcher.samples > 0
    assert watcher.breaches == []


async def test_fifteen_replicas_on_the_thesis_pcs_survive_a_person_and_a_lost_pc(
    broker: BrokerInfo, unique: str, tmp_path: Path
) -> None:
    pcs = thesis_pcs(unique)
    edge, ninja = pcs[0].name, pcs[1].name
    async with control_plane(tmp_path, pcs) as plane:
        await plane.quota("alice", 20_000)
        assert (await plane.deploy("alice", "stereo", 15)).accepted
        async with watched(plane, "alice") as watcher:
            await until(lambda: watcher.running["alice"] == 15, "15 replicas running")
            per_pc = (await plane.apps("alice")).apps[0].replicas_per_node
            assert per_pc == {edge: 6, **{pc.name: 3 for pc in pcs[1:]}}

            plane.simulation.login(edge)  # a person sits down at Edge: 12 CPUs are left
            await until(lambda: watcher.running["alice"] == 12, "12 running elsewhere")
            view = (await plane.apps("alice")).apps[0]
            assert edge not in view.replicas_per_node
            assert view.state.value == "degraded" and "not enough free CPU" in view.reason

            plane.simulation.logout(edge)  # the person leaves: Edge's paused replicas resume
            await until(lambda: watcher.running["alice"] == 15, "15 again")

            plane.simulation.kill(ninja)  # Ninja's plug is pulled
            for _ in range(300):  # its replicas are lost (and replaced faster than sampled)
                per_pc = (await plane.apps("alice")).apps[0].replicas_per_node
                if ninja not in per_pc and sum(per_pc.values()) == 15:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"never 15 again without Ninja: {per_pc}")


async def test_two_users_with_quotas_share_scarce_pcs_fairly_and_both_jobs_finish(
    broker: BrokerInfo, unique: str, tmp_path: Path
) -> None:
    """Alice and Bob, 6 CPUs of quota each, each run a job on worker replicas; three of
    the four PCs fail, leaving Penguin's 4 CPUs: they share them 2 and 2, and both jobs
    finish."""
    pcs = thesis_pcs(unique)
    worker = (sys.executable, "-m", "idlecloud", "worker", "tests.programs.sdk_app:app")
    async with control_plane(tmp_path, pcs) as plane:
        await plane.quota("alice", 6000)
        await plane.quota("bob", 6000)
        refused = await plane.deploy("alice", "big", 7)
        assert not refused.accepted and "its quota is 6000m CPU" in refused.reason
        async with watched(plane, "alice", "bob") as watcher:
            assert (await plane.deploy("alice", "sdk", 6, command=worker)).accepted
            assert (await plane.deploy("bob", "sdk", 6, command=worker)).accepted
            await until(lambda: watcher.running == {"alice": 6, "bob": 6}, "both at quota", 60)
            async with (
                TaskClient(plane.bus, make_app("alice", "sdk")) as alice,
                TaskClient(plane.bus, make_app("bob", "sdk")) as bob,
            ):
                jobs = [
                    asyncio.create_task(collect(client.map(client.app.tasks["nap"], [0.3] * 120)))
                    for client in (alice, bob)
                ]
                await asyncio.sleep(1.0)
                for pc in pcs[:3]:  # only Penguin's 4 CPUs are left
                    plane.simulation.kill(pc.name)
                assert not any(job.done() for job in jobs)  # the failure hits both jobs
                await until(lambda: sum(watcher.running.values()) == 4, "capacity short", 20)
                await until(lambda: watcher.running == {"alice": 2, "bob": 2}, "fair shares", 30)
                for job in jobs:
                    assert sorted(await asyncio.wait_for(job, 120)) == list(range(120))


async def test_the_standby_takes_over_when_the_leader_dies_and_nothing_runs_twice(
    broker: BrokerInfo, unique: str, tmp_path: Path
) -> None:
    pcs = thesis_pcs(unique)[1:]  # 12 CPUs
    async with control_plane(tmp_path, pcs, placement=False) as plane:
        first_bus = await Bus(plane.url, connection_name="placement a").connect()
        second_bus = await Bus(plane.url, connection_name="placement b").connect()
        first, second = Placement(FAST, retry_s=0.2), Placement(FAST, retry_s=0.2)
        await first.start(first_bus)
        await until(lambda: first.leadership.leading, "the first placement to lead")
        await second.start(second_bus)
        await plane.registry_ready(first.registry)
        try:
            await plane.quota("alice", 20_000)
            assert (await plane.deploy("alice", "stereo", 10)).accepted
            async with watched(plane, "alice") as watcher:
                await until(lambda: watcher.running["alice"] == 10, "10 running")
                assert not second.leadership.leading
                await first_bus.close()  # the leader's connection dies, its queue with it
                await until(lambda: second.leadership.leading, "the standby to lead", 5)
                assert (await plane.deploy("alice", "stereo", 11)).accepted
                await until(lambda: watcher.running["alice"] == 11, "the new leader's work")
            assert second.leadership.epoch is not None
        finally:
            await second.stop(1.0)
            await second_bus.close()


async def test_a_cold_leader_hears_every_pc_before_it_places_anything(
    broker: BrokerInfo, unique: str, tmp_path: Path
) -> None:
    """Agents send a whole heartbeat every 5 s and signs of life between, which name no
    replica: a placement started while 10 replicas run knows a PC only from its next
    whole heartbeat, and starts nothing before it has heard them all (``heard_all_s``)."""
    pcs = thesis_pcs(unique)[1:]  # 12 CPUs
    async with control_plane(tmp_path, pcs, placement=False) as plane:
        async with Bus(plane.url, connection_name="placement a") as first_bus:
            first = Placement(FAST, retry_s=0.2)
            await first.start(first_bus)
            await plane.registry_ready(first.registry)
            await plane.quota("alice", 20_000)
            assert (await plane.deploy("alice", "stereo", 10)).accepted
            await until(lambda: sum(len(n.replicas) for n in first.registry.nodes.values()) == 10,
                        "10 running")  # fmt: skip
            await first.stop(1.0)
        async with Bus(plane.url, connection_name="placement b") as cold_bus:
            cold = Placement(replace(FAST, heard_all_s=6.0), retry_s=0.2)
            await cold.start(cold_bus)
            try:
                await until(lambda: cold.leadership.leading, "the cold one to lead", 10)
                await asyncio.sleep(8.0)  # past heard_all_s, and two ticks more
                assert cold.starts_confirmed == 0
                assert await plane.running("alice") == 10
            finally:
                await cold.stop(1.0)


async def test_a_job_finishes_while_pcs_go_down_and_come_back(
    broker: BrokerInfo, unique: str, tmp_path: Path
) -> None:
    """18 real worker replicas (`bus worker`) on 20 CPUs; every few seconds one 4-CPU PC
    is killed (its replicas die, 2 cannot be placed) and comes back (it takes them)."""
    pcs = thesis_pcs(unique)
    async with control_plane(tmp_path, pcs) as plane:
        await plane.quota("alice", 20_000)
        worker = (sys.executable, "-m", "idlecloud", "worker", "tests.programs.sdk_app:app")
        assert (await plane.deploy("alice", "sdk", 18, command=worker)).accepted
        async with watched(plane, "alice") as watcher:
            await until(lambda: watcher.running["alice"] == 18, "18 workers", 60)
            async with TaskClient(plane.bus, make_app("alice", "sdk")) as client:
                job = asyncio.create_task(collect(client.map(client.app.tasks["nap"], [0.4] * 400)))
                for pc in pcs[1:]:
                    plane.simulation.kill(pc.name)
                    await until(lambda: watcher.running["alice"] == 16, "2 replicas short", 20)
                    plane.simulation.up(plane.url, (pc,), extra_args=AGENT_ARGS)
                    await until(lambda: watcher.running["alice"] == 18, "18 again", 30)
                    view = (await plane.apps("alice")).apps[0]
                    assert view.replicas_per_node.get(pc.name, 0) >= 2  # the returning PC
                results = await asyncio.wait_for(job, 120)
        assert sorted(results) == list(range(400))  # every task done, none lost


async def collect(results: AsyncIterator[tuple[int, object]]) -> list[int]:
    return [index async for index, _value in results]


async def test_the_bus_commands_drive_the_control_plane(
    broker: BrokerInfo, unique: str, tmp_path: Path
) -> None:
    """Real `bus` processes: deploy, refusal, apps, app, scale, nodes, cordon, events, delete."""
    pcs = thesis_pcs(unique)[1:3]  # 8 CPUs

    async def bus(*arguments: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(bus_cli, *arguments, url=plane.url)

    async with control_plane(tmp_path, pcs) as plane:
        assert (await bus("quota", "set", "alice", "--cpu-millicores", "4000",
                          "--memory-mib", "4096")).returncode == 0  # fmt: skip
        listening = asyncio.create_task(bus("events", "-n", "alice", "--seconds", "6", "--json"))
        await asyncio.sleep(1.5)  # the listener's queue is bound
        command = [f"--command={part}" for part in SLEEPER]
        deployed = await bus(
            "deploy", "spin", "-n", "alice", "--image", "local", "--replicas", "3", *command
        )
        assert deployed.returncode == 0, deployed.stderr
        assert "spin: 3 replicas admitted" in deployed.stdout
        refused = await bus("deploy", "huge", "-n", "alice", "--image", "local", "--command",
                            "true", "--replicas", "5")  # fmt: skip
        assert refused.returncode == 1
        assert "refused: alice would reserve 8000m CPU" in " ".join(refused.stderr.split())
        for _ in range(50):
            apps = json.loads((await bus("apps", "-n", "alice", "--json")).stdout)
            if apps["apps"] and apps["apps"][0]["running"] == 3:
                break
            await asyncio.sleep(0.3)
        assert apps["quota"] == {"cpu_millicores": 4000, "memory_mib": 4096}
        assert apps["apps"][0]["state"] == "running"
        detail = await bus("app", "spin", "-n", "alice")
        assert detail.returncode == 0 and "3/3 running" in detail.stdout
        assert (await bus("app", "ghost", "-n", "alice")).returncode == 1
        scaled = await bus("scale", "spin", "1", "-n", "alice")
        assert scaled.returncode == 0 and "spin: scaled to 1" in scaled.stdout
        cordoned = await bus("cordon", pcs[0].name, "--reason", "exam week")
        assert cordoned.returncode == 0
        states = {
            n["node"]: n["state"]
            for n in json.loads((await bus("nodes", "--json")).stdout)["nodes"]
        }
        assert states == {pcs[0].name: "cordoned", pcs[1].name: "idle"}
        heard = [json.loads(line) for line in (await listening).stdout.splitlines()]
        statuses = [e for e in heard if e["schema"] == "DeploymentStatus" and e["app"] == "spin"]
        assert statuses and statuses[-1]["state"] == "running"
        assert all(e.get("namespace") == "alice" for e in heard)  # only alice's events
        assert (await bus("delete", "spin", "-n", "alice")).returncode == 0


async def test_replicas_work_with_their_own_tokens_renewed_before_they_expire(
    broker: BrokerInfo, unique: str, tmp_path: Path
) -> None:
    """With the auth service, each replica gets a broker token living 8 s in its token
    file; `bus worker` connects with it (its only rights: its task and result traffic),
    and placement renews it through the agent, so a job after the first token expired
    still runs."""
    pcs = thesis_pcs(unique)[1:2]  # Ninja alone
    async with control_plane(tmp_path, pcs, token_s=8) as plane:
        await plane.quota("alice", 4000)
        worker = (sys.executable, "-m", "idlecloud", "worker", "tests.programs.sdk_app:app")
        assert (await plane.deploy("alice", "sdk", 2, command=worker)).accepted
        async with watched(plane, "alice") as watcher:
            await until(lambda: watcher.running["alice"] == 2, "2 workers", 60)
            tokens = plane.simulation.replica_dir(pcs[0].name) / "tokens"
            token_files = list(tokens.glob("*/token"))
            assert len(token_files) == 2
            first = {path: path.read_text() for path in token_files}
            claims = jwt.decode(next(iter(first.values())), options={"verify_signature": False})
            assert claims["idlecloud_role"] == "replica" and claims["exp"] - claims["iat"] == 8
            async with TaskClient(plane.bus, make_app("alice", "sdk")) as client:
                assert sorted(await collect(client.map(client.app.tasks["nap"], [0.01] * 20))) == (
                    list(range(20))
                )
                await asyncio.sleep(10)  # the first tokens have expired
                assert all(path.read_text() != token for path, token in first.items())
                assert sorted(await collect(client.map(client.app.tasks["nap"], [0.01] * 20))) == (
                    list(range(20))
                )


#: A replica that takes 5 s to exit on SIGTERM (it finishes its work first).
SLOW_TO_EXIT = (sys.executable, "-c", "import signal, time\n"
                "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(5), exit(0)))\n"
                "time.sleep(3600)")  # fmt: skip


def running_millicores(plane: Plane, namespace: str) -> int:
    """What a namespace's replica processes on the simulated PCs reserve, from the agents'
    records and the real processes (a zombie does not count)."""
    total = 0
    for pc in plane.pcs:
        for record_path in (plane.simulation.state_dir(pc.name) / "replicas").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(record_path.read_text())
                if record["namespace"] != namespace:
                    continue
                try:
                    alive = psutil.Process(record["pid"]).status() != psutil.STATUS_ZOMBIE
                except psutil.Error:
                    alive = False
                total += record["cpu_millicores"] if alive else 0
    return total


async def test_replicas_slow_to_exit_hold_the_quota_until_they_are_gone(
    unique: str, tmp_path: Path
) -> None:
    """Quota 4000m; 4 x 1000m replicas that take 5 s to exit on SIGTERM are scaled to 0 and
    another app of 4 x 1000m deployed at once. Sampled every 0.1 s from the PCs' real
    processes, the namespace never runs more than its quota."""
    async with control_plane(tmp_path, thesis_pcs(unique)[1:3]) as plane:
        await plane.quota("alice", 4000)
        deployed = await plane.deploy("alice", "slow", 4, command=SLOW_TO_EXIT)
        assert deployed.accepted, deployed.reason
        await until(lambda: running_millicores(plane, "alice") == 4000, "4 slow replicas")
        scaled = await plane.request(Owner.namespace("alice"), ScaleRequest(
            request_id=f"scale-{unique}", namespace="alice", app="slow", replicas=0))  # fmt: skip
        assert scaled.accepted, scaled.reason
        replacing = await plane.deploy("alice", "next", 4)
        assert replacing.accepted, replacing.reason
        samples: list[int] = []
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            samples.append(running_millicores(plane, "alice"))
            if await plane.running("alice") == 4 and samples[-1] == 4000:
                break
            await asyncio.sleep(0.1)
        print(f"{len(samples)} samples, most {max(samples)}m against 4000m")
        assert max(samples) <= 4000
        assert {view.app: view.running for view in (await plane.apps("alice")).apps}["next"] == 4
