"""Jobs against a real broker: submitted, followed, read, cancelled, deleted, expired."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiormq
import pytest

from bus.connection import Bus
from bus.errors import PublishRefused
from bus.rpc import RpcClient
from bus.sdk import App, Job, JobError, JobExpired, JobRefused, TaskClient, Worker
from bus.sdk.protocol import Outcome
from bus.streams import StreamTail
from bus.topology import QueueSpec, cancels_spec, job_stream_spec
from idlecloud.dev.services import BrokerInfo, restart_broker
from schemas import JobsQuery, JobsReply, Owner
from services.auth.tokens import SigningKey
from services.jobs.service import JobSettings, JobsService

from .control_plane import AGENT_ARGS, control_plane, thesis_pcs
from .helpers import open_namespace, wait_until
from .login import Login
from .test_cli import bus_cli

REFUSED = (aiormq.exceptions.ChannelAccessRefused, aiormq.exceptions.ChannelClosed)


def make_app(namespace: str, app_id: str) -> App:
    """Two tasks, run by in-process workers: a square, and a square that takes a while."""
    app = App(namespace, app_id, prefetch=8)

    @app.task(executor="inline")
    def square(x: int) -> int:
        return x * x

    @app.task
    async def slow_square(x: int, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return x * x

    return app


@dataclass(frozen=True)
class Space:
    """A scratch vhost with a namespace's door open, and the test app in it."""

    info: BrokerInfo
    bus: Bus
    namespace: str
    app: App


@pytest.fixture
async def space(scratch: tuple[BrokerInfo, Bus], unique: str) -> Space:
    info, bus = scratch
    namespace = f"ns{unique}"
    await open_namespace(bus, namespace)
    return Space(info, bus, namespace, make_app(namespace, "sdk"))


@asynccontextmanager
async def jobs_service(bus: Bus, settings: JobSettings | None = None) -> AsyncIterator[JobsService]:
    service = JobsService(settings, retry_s=0.2)
    await service.start(bus)
    try:
        await wait_until(lambda: service.leadership.leading, 10, "the jobs service to lead")
        yield service
    finally:
        await service.stop(1.0)


@asynccontextmanager
async def workers(bus: Bus, app: App, count: int = 2) -> AsyncIterator[list[Worker]]:
    started = [Worker(app, concurrency=4) for _ in range(count)]
    for worker in started:
        await worker.start(bus)
    try:
        yield started
    finally:
        for worker in started:
            await worker.stop(2.0)


async def read_all(results: AsyncIterator[tuple[int, Outcome]]) -> dict[int, object]:
    seen: dict[int, object] = {}
    async for index, outcome in results:
        assert index not in seen, f"result {index} came twice"
        seen[index] = outcome.value if outcome.ok else outcome.error
    return seen


async def test_a_job_is_submitted_then_read_whole_by_a_later_client(
    space: Space,
) -> None:
    info, bus, namespace, app = space.info, space.bus, space.namespace, space.app
    async with jobs_service(bus) as service, TaskClient(bus, app) as client:
        job = await client.submit_job(app.tasks["square"], range(500), name="squares")
        async with workers(bus, app):
            view = await job.wait(poll_s=0.2)
        assert view.state == "done" and (view.done, view.failed) == (500, 0)
        async with Bus(info.url, connection_name="later reader") as later:
            other = TaskClient(later, app).attach_job(job.job_id)
            assert await read_all(other.results(order="input")) == {i: i * i for i in range(500)}
        assert service.reply(namespace).jobs[0].name == "squares"


async def test_cancel_drops_a_jobs_outstanding_calls_while_another_job_on_the_app_finishes(
    space: Space,
) -> None:
    """Jobs A and B share an app's task queue (A's 200 calls ahead of B's 100). A is
    cancelled mid-way: within 2 s every outstanding call of A is gone from the queue (the
    workers acknowledged them unstarted), none starts after the cancel, and B finishes
    with every result right."""
    bus, namespace, app = space.bus, space.namespace, space.app
    started: list[tuple[int, float]] = []
    task = app.tasks["slow_square"]
    original = task.function

    async def recorded(x: int, seconds: float) -> int:
        started.append((x, time.monotonic()))
        return int(await original(x, seconds))

    object.__setattr__(task, "function", recorded)
    async with jobs_service(bus) as service, TaskClient(bus, app) as client:
        first = await client.submit_job(task, [(x, 0.2) for x in range(200)], name="a")
        second = await client.submit_job(task, [(x, 0.02) for x in range(1000, 1100)], name="b")
        async with workers(bus, app) as running:
            await wait_until(lambda: len(started) >= 16, 10, "A's calls to start")
            await first.cancel()
            cancelled_at = time.monotonic()
            assert (await first.status()).state == "cancelled"

            def a_accounted() -> bool:
                begun = sum(1 for x, _ in started if x < 1000)
                return begun + sum(w.skipped for w in running) == 200

            await wait_until(a_accounted, 2.0, "A's outstanding calls to be dropped")
            dropped_s = time.monotonic() - cancelled_at
            view = await second.wait(poll_s=0.2)
        late = [x for x, at in started if x < 1000 and at > cancelled_at + 0.05]
        assert late == [], f"calls of the cancelled job started after the cancel: {late}"
        assert view.state == "done" and view.done == 100
        assert await read_all(second.results()) == {i: (1000 + i) ** 2 for i in range(100)}
        kept = await read_all(first.results(order="input"))
        assert 0 < len(kept) < 200 and all(kept[i] == i * i for i in kept)
        assert service.reply(namespace, first.job_id).jobs[0].state == "cancelled"
    print(f"A's outstanding calls dropped {dropped_s:.2f} s after the cancel")


async def test_two_readers_on_two_connections_each_get_every_result(
    space: Space,
) -> None:
    info, bus, namespace, app = space.info, space.bus, space.namespace, space.app
    async with jobs_service(bus), TaskClient(bus, app) as client:
        job = await client.submit_job(app.tasks["square"], range(2000), batch_size=10)
        async with workers(bus, app):
            await job.wait(poll_s=0.2)
        async with (
            Bus(info.url, connection_name="reader one") as one,
            Bus(info.url, connection_name="reader two") as two,
        ):
            got = await asyncio.gather(
                read_all(Job.attach(one, namespace, job.job_id).results()),
                read_all(Job.attach(two, namespace, job.job_id).results(order="input")),
            )
    expected = {i: i * i for i in range(2000)}
    assert got[0] == expected and got[1] == expected


async def test_an_expired_job_says_so_and_a_namespace_over_its_bound_is_refused(
    space: Space,
) -> None:
    bus, namespace, app = space.bus, space.namespace, space.app
    settings = JobSettings(retention_s=2.0, max_stored_bytes=2000, sweep_s=0.2)
    async with jobs_service(bus, settings) as service, TaskClient(bus, app) as client:
        job = await client.submit_job(app.tasks["square"], range(100))
        async with workers(bus, app):
            view = await job.wait(poll_s=0.2)
        assert view.stored_bytes > 2000 and view.expires_at is not None
        with pytest.raises(JobRefused) as refused:
            await client.submit_job(app.tasks["square"], range(10))
        reason = str(refused.value)
        assert f"keeps {view.stored_bytes} bytes of job results" in reason
        assert "its bound is 2000 bytes" in reason and "bus job delete" in reason
        expired = service.state.jobs
        await wait_until(lambda: expired[(namespace, job.job_id)].state == "expired", 10, "expiry")
        assert (await job.status()).state == "expired"
        with pytest.raises(JobExpired, match="expired"):
            await read_all(job.results())
        again = await client.submit_job(app.tasks["square"], range(10))  # expired: not counted
        assert (await again.status()).state == "running"
        await again.delete()
        assert (await again.status()).state == "deleted"  # its history stays
        with pytest.raises(JobError, match="deleted"):
            await read_all(again.results())
        assert [view.job_id for view in service.reply(namespace).jobs] == [job.job_id]


async def read_stream(bus: Bus, spec: QueueSpec) -> None:
    """Consume a stream from its start, as a reader of a job does (for a refusal)."""
    channel = await bus.channel(prefetch=10)
    try:
        tail = await StreamTail(spec, lambda _offset, _message: None).start(channel)
        await tail.stop()
    finally:
        if not channel.is_closed:
            await channel.close()


async def test_bobs_key_cannot_list_read_cancel_or_delete_alices_job(
    scratch: tuple[BrokerInfo, Bus], signing_key: SigningKey, unique: str
) -> None:
    """With real broker tokens: Bob's key is refused (by the broker, or by the jobs service
    for a request through his own door) every way at Alice's job, and the platform's
    record of it and its stream are untouched. The job runs on a worker holding a
    replica's token, which reads the namespace's cancellations and nothing else."""
    info, bus = scratch
    login = Login(info, signing_key)
    alice, bob = f"alice{unique}", f"bob{unique}"
    app = make_app(alice, "sdk")
    async with (
        jobs_service(bus) as service,
        await login.connect("user", alice) as alice_bus,
        await login.connect("user", bob) as bob_bus,
        TaskClient(alice_bus, app) as client,
    ):
        job = await client.submit_job(app.tasks["square"], range(50))
        async with await login.connect("replica", alice, "sdk") as replica_bus:
            async with workers(replica_bus, app, count=1):
                await job.wait(poll_s=0.2)
            await read_stream(replica_bus, cancels_spec(alice))  # what its worker reads
            with pytest.raises(REFUSED):  # but not the job's results
                await read_stream(replica_bus, job_stream_spec(alice, job.job_id))
        await read_stream(alice_bus, job_stream_spec(alice, job.job_id))  # the control
        key = (alice, job.job_id)
        as_bob = Job.attach(bob_bus, alice, job.job_id)

        async def list_hers() -> object:
            client = await RpcClient(bob_bus, Owner.namespace(alice)).start()
            return await client.call(JobsQuery(namespace=alice), JobsReply)

        attempts: dict[str, Callable[[], Awaitable[object]]] = {
            "list": list_hers,
            "status": as_bob.status,
            "cancel": as_bob.cancel,
            "delete": as_bob.delete,
            "results": lambda: read_all(as_bob.results()),
            "the stream": lambda: read_stream(bob_bus, job_stream_spec(alice, job.job_id)),
            "the cancels": lambda: read_stream(bob_bus, cancels_spec(alice)),
        }
        for what, attempt in attempts.items():
            with pytest.raises((*REFUSED, PublishRefused)):
                await attempt()
            assert service.state.jobs[key].state == "done", what
        through_his_door = Job.attach(bob_bus, bob, job.job_id)
        for what, attempt in {"cancel": through_his_door.cancel,
                              "delete": through_his_door.delete}.items():  # fmt: skip
            with pytest.raises(JobRefused, match=f"no job {job.job_id} in namespace {bob}"):
                await attempt()
            assert service.state.jobs[key].state == "done", what
        with pytest.raises(JobError, match="no job"):
            await through_his_door.status()
        mine = await RpcClient(bob_bus, Owner.namespace(bob)).start()
        listed = await mine.call(JobsQuery(namespace=bob), JobsReply)
        await mine.stop()
        assert listed.jobs == ()
        assert await read_all(job.results()) == {i: i * i for i in range(50)}  # Alice reads


async def test_a_job_outlives_its_submitter_lost_pcs_a_person_and_a_broker_restart(
    broker: BrokerInfo, unique: str, tmp_path: Path
) -> None:
    """`bus job submit` sends 2,000 calls and exits. While 16 worker replicas run them, a
    PC dies and comes back, a person logs in at another, and the broker restarts. Then
    `bus job results`, a new process on its own connection, gets all 2,000 results,
    once each and right."""
    pcs = thesis_pcs(unique)
    async with control_plane(tmp_path, pcs, jobs=JobSettings()) as plane:
        await plane.quota("alice", 20_000)
        worker = (sys.executable, "-m", "idlecloud", "worker", "tests.programs.job_app:app")
        assert (await plane.deploy("alice", "jobs", 16, command=worker)).accepted
        for _ in range(300):  # up to 60 s for the replicas to start
            if await plane.running("alice") == 16:
                break
            await asyncio.sleep(0.2)
        assert await plane.running("alice") == 16
        inputs = tmp_path / "inputs.jsonl"
        inputs.write_text("".join(f"[{x}, 0.1]\n" for x in range(2000)))
        env = {"IDLECLOUD_NAMESPACE": "alice", "IDLECLOUD_APP": "jobs"}
        submitted = await asyncio.to_thread(
            bus_cli, "job", "submit", "tests.programs.job_app:slow_square", "--inputs",
            str(inputs), "--name", "overnight", "--json", url=plane.url, env=env,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        job_id = json.loads(submitted.stdout)["job_id"]  # the submitter has exited
        service = next(s for s in plane.services if isinstance(s, JobsService))

        def answered() -> int:
            view = service.reply("alice", job_id).jobs[0]
            return view.done + view.failed

        await wait_until(lambda: answered() >= 200, 60, "200 results")
        plane.simulation.kill(pcs[0].name)  # Edge dies with its replicas
        await wait_until(lambda: answered() >= 500, 60, "500 results")
        plane.simulation.up(plane.url, (pcs[0],), extra_args=AGENT_ARGS)
        plane.simulation.login(pcs[1].name)  # a person sits down at Ninja
        await wait_until(lambda: answered() >= 800, 60, "800 results")
        before = answered()
        await asyncio.to_thread(restart_broker)
        await wait_until(lambda: answered() >= before + 200, 90, "results after the restart")
        await wait_until(lambda: service.state.jobs[("alice", job_id)].state == "done", 120,
                         "the job to be done")  # fmt: skip
        out = tmp_path / "results.jsonl"
        read = await asyncio.to_thread(
            bus_cli, "job", "results", job_id, "-n", "alice", "--out", str(out),
            "--order", "input", url=plane.url,
        )  # fmt: skip
        assert read.returncode == 0, read.stderr
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [line["index"] for line in lines] == list(range(2000))
        assert all(line["ok"] and line["value"] == line["index"] ** 2 for line in lines)
        view = service.reply("alice", job_id).jobs[0]
        assert (view.done, view.failed, view.name) == (2000, 0, "overnight")
        history = await asyncio.to_thread(bus_cli, "job", "history", "-n", "alice", "--json",
                                          url=plane.url)  # fmt: skip
        (ended,) = json.loads(history.stdout)["jobs"]
        assert (ended["job_id"], ended["state"], ended["done"]) == (job_id, "done", 2000)
        assert ended["submitter"] == "guest"  # the development broker's user
        assert len(ended["nodes"]) >= 2 and set(ended["nodes"]) <= {pc.name for pc in pcs}
        assert ended["redelivered"] >= 1  # the calls Edge's replicas held when it died
        await service.stop(1.0)  # the history outlives the service and the broker too
        reconnects = plane.bus.reconnects
        await asyncio.to_thread(restart_broker)
        await wait_until(lambda: plane.bus.reconnects > reconnects, 60, "the bus back")
        fresh = JobsService(JobSettings(), retry_s=0.2)
        await fresh.start(plane.bus)
        try:
            await wait_until(lambda: fresh.leadership.leading, 20, "the new jobs service")
            replayed = fresh.reply("alice", job_id).jobs[0]
            assert replayed.model_dump(exclude={"rate_per_s"}) == view.model_dump(
                exclude={"rate_per_s"}
            )  # fmt: skip
        finally:
            await fresh.stop(1.0)
        print(f"2,000 results read back once each; {view.duplicates} calls ran twice, "
              f"{view.redelivered} were handed out again; PCs {ended['nodes']}")  # fmt: skip


async def test_the_job_commands_take_a_generator_and_explain_bad_input(
    space: Space, tmp_path: Path
) -> None:
    """`bus job submit --inputs-from` seals a job of a generator's calls; two `bus job
    results` processes read the finished job at once, each getting every result; a bad
    inputs file, a bad job id and an unknown job each end with a sentence and an exit
    code."""
    info, bus, namespace = space.info, space.bus, space.namespace
    env = {"IDLECLOUD_NAMESPACE": namespace, "IDLECLOUD_APP": "jobs"}

    async def cli(*arguments: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(bus_cli, *arguments, url=info.url, env=env)

    async with jobs_service(bus):
        program = "tests.programs.job_app"
        submitted = await cli("job", "submit", f"{program}:slow_square",
                              "--inputs-from", f"{program}:quick_inputs", "--json")  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        view = json.loads(submitted.stdout)
        assert (view["state"], view["total"]) == ("running", 2000)  # sealed with the count
        async with workers(bus, make_app(namespace, "jobs")):
            waited = await cli("job", "wait", view["job_id"], "-n", namespace)
        assert waited.returncode == 0 and "done; 2000 done, 0 failed" in waited.stdout
        outs = [tmp_path / "one.jsonl", tmp_path / "two.jsonl"]
        reads = await asyncio.gather(*(cli("job", "results", view["job_id"], "-n", namespace,
                                           "--out", str(out)) for out in outs))  # fmt: skip
        for read, out in zip(reads, outs, strict=True):
            assert read.returncode == 0, read.stderr
            lines = [json.loads(line) for line in out.read_text().splitlines()]
            assert sorted(line["index"] for line in lines) == list(range(2000))
            assert all(line["value"] == line["index"] ** 2 for line in lines)
        listed = await cli("job", "list", "-n", namespace, "--json")
        assert [job["job_id"] for job in json.loads(listed.stdout)["jobs"]] == [view["job_id"]]

        bad = tmp_path / "bad.jsonl"
        bad.write_text('[1, 0.0]\n{"x": 2}\n')
        refused = await cli("job", "submit", "tests.programs.job_app:slow_square",
                            "--inputs", str(bad))  # fmt: skip
        assert refused.returncode == 2 and "line 2: a dict, not a JSON list" in refused.stderr
        wrong = await cli("job", "status", "not-a-job", "-n", namespace)
        assert wrong.returncode == 2 and "is not a job id" in wrong.stderr
        unknown = await cli("job", "cancel", "j" + "0" * 20, "-n", namespace)
        assert unknown.returncode == 1 and f"no job j{'0' * 20} in namespace" in unknown.stderr
        assert "Traceback" not in refused.stderr + wrong.stderr + unknown.stderr
