"""`bus usage`: CPU reserved and used, per namespace and app, PC or day.

The arithmetic is tested on InfluxDB-shaped answers; the whole path (agents' samples, the
metrics writer, InfluxDB, the usage server, the CLI) against a real job whose replicas
measure their own CPU time.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bus import names
from bus.connection import Bus
from bus.errors import PublishRefused
from bus.rpc import RpcClient
from bus.sdk import App, TaskClient
from idlecloud.dev.influx import INFLUX_URL, scratch_database
from idlecloud.dev.services import BrokerInfo, free_port
from nodeagent.sim import SimNode
from schemas import Owner, UsageQuery, UsageReply, UsageRow, utc_now
from services.auth.tokens import SigningKey
from services.jobs.service import JobSettings
from services.metrics.influx import InfluxV1
from services.metrics.usage import (
    Window,
    baseline_query,
    edge_query,
    totals,
    usage_rows,
    window_query,
)
from services.metrics.usage_server import UsageServer, usage_query
from services.metrics.writer import MetricsWriter

from .control_plane import AGENT_ARGS, control_plane
from .helpers import wait_until
from .login import Login
from .test_cli import bus_cli
from .test_jobs import REFUSED

DAY = datetime(2026, 12, 1, tzinfo=UTC)


def answer(*series: tuple[dict[str, str], list[list[Any]]], reserved: bool = True) -> Any:
    """InfluxDB's JSON for one query: each series' tags and rows."""
    columns = ["time", "used", "reserved"] if reserved else ["time", "used"]
    return {"results": [{"statement_id": 0, "series": [
        {"name": "replica", "tags": tags, "columns": columns, "values": values}
        for tags, values in series
    ]}]}  # fmt: skip


def tags(
    replica: str, app: str = "stereo", node: str = "edge", ns: str = "alice"
) -> dict[str, str]:
    return {"namespace": ns, "app": app, "node": node, "replica": replica}


def test_use_is_the_counter_past_its_baseline_and_reservation_its_integral() -> None:
    """A replica that ran before the window counts only what it used inside; one that
    started inside counts all; replicas add up per app, and per PC."""
    within = answer(
        (tags("r1"), [["2026-12-01T00:00:00Z", 130.0, 200_000.0]]),
        (tags("r2", node="ninja"), [["2026-12-01T00:00:00Z", 40.0, 100_000.0]]),
        (tags("r3", app="other"), [["2026-12-01T00:00:00Z", 5.0, 1000.0]]),
    )
    before = answer((tags("r1"), [["2026-11-30T23:59:58Z", 100.0]]), reserved=False)
    split = answer(  # InfluxDB 1.6 may answer r2's counter and integral apart
        (tags("r1"), [["2026-12-01T00:00:00Z", 130.0, 200_000.0]]),
        (tags("r2", node="ninja"), [["2026-12-01T00:00:00Z", 40.0, None]]),
        (tags("r3", app="other"), [["2026-12-01T00:00:00Z", 5.0, 1000.0]]),
        (tags("r2", node="ninja"), [["2026-12-01T00:00:00Z", None, 100_000.0]]),
    )
    assert usage_rows(split, before, "app") == usage_rows(within, before, "app")
    rows = usage_rows(within, before, "app")
    assert rows == [
        UsageRow(namespace="alice", app="stereo", reserved_cpu_s=300.0, used_cpu_s=70.0,
                 replicas=2, nodes=("edge", "ninja")),
        UsageRow(namespace="alice", app="other", reserved_cpu_s=1.0, used_cpu_s=5.0,
                 replicas=1, nodes=("edge",)),
    ]  # fmt: skip
    by_pc = usage_rows(within, before, "pc")
    assert [(row.node, row.used_cpu_s) for row in by_pc] == [("ninja", 40.0), ("edge", 35.0)]
    assert totals(rows) == (301.0, 75.0)


def test_by_day_each_days_use_starts_where_the_day_before_ended() -> None:
    """Per UTC day: a day's highest counter less the day before's; a counter that went
    down (restarted in place) counts from zero; an empty day is no row."""
    within = answer((tags("r1"), [
        ["2026-12-01T00:00:00Z", 10.0, 3_600_000.0],
        ["2026-12-02T00:00:00Z", 25.0, 3_600_000.0],
        ["2026-12-03T00:00:00Z", 4.0, 1_000.0],  # restarted: 4 s since
        ["2026-12-04T00:00:00Z", None, None],
        ["2026-12-05T00:00:00Z", 10.0, 1_000.0],  # 6 s more since the restart
    ]))  # fmt: skip
    rows = usage_rows(within, answer(reserved=False), "day")
    assert [(row.day, row.used_cpu_s, row.reserved_cpu_s) for row in rows] == [
        (DAY, 10.0, 3600.0),
        (DAY + timedelta(days=1), 15.0, 3600.0),
        (DAY + timedelta(days=2), 4.0, 1.0),
        (DAY + timedelta(days=4), 6.0, 1.0),
    ]


def test_per_app_a_row_says_on_which_pcs_and_from_when_to_when_its_replicas_ran() -> None:
    """The earliest first sample and the latest last sample of an app's replicas bound its
    row; its PCs are every one a replica ran on. Without the edge answers, no times."""
    within = answer(
        (tags("r1"), [["1970-01-01T00:00:00Z", 30.0, 1000.0]]),
        (tags("r2", node="ninja"), [["1970-01-01T00:00:00Z", 40.0, 1000.0]]),
    )

    def edge(r1: str, r2: str) -> Any:
        return answer((tags("r1"), [[r1, 1.0]]), (tags("r2", node="ninja"), [[r2, 2.0]]),
                      reserved=False)  # fmt: skip

    firsts = edge("2026-12-01T08:00:00Z", "2026-12-01T07:30:00Z")
    lasts = edge("2026-12-01T09:00:00Z", "2026-12-01T10:15:00Z")
    (row,) = usage_rows(within, answer(reserved=False), "app", (firsts, lasts))
    assert row.nodes == ("edge", "ninja") and row.replicas == 2
    assert (row.first_at, row.last_at) == (DAY + timedelta(hours=7.5),
                                           DAY + timedelta(hours=10.25))  # fmt: skip
    (plain,) = usage_rows(within, answer(reserved=False), "app")
    assert plain.first_at is None and plain.last_at is None and plain.nodes == row.nodes
    assert 'first("cpu_s")' in edge_query(Window(DAY, DAY, "alice", "app"), "first")


def test_the_queries_name_the_window_and_the_namespace_and_a_refusal_is_an_error() -> None:
    window = Window(DAY, DAY + timedelta(days=1), "alice", "day")
    text = window_query(window)
    assert "GROUP BY time(1d), " in text and "fill(none)" in text
    assert f"time >= {int(DAY.timestamp()) * 10**9}" in text and "'alice'" in text
    before = baseline_query(Window(DAY, DAY, None, "app"))
    assert "namespace" not in before.split("GROUP BY")[0]  # every namespace's
    assert f"time < {int(DAY.timestamp()) * 10**9}" in before
    with pytest.raises(ValueError, match="refused a usage query: bad"):
        usage_rows({"results": [{"error": "bad"}]}, answer(reserved=False), "app")


@pytest.fixture
def database() -> Iterator[str]:
    with scratch_database("usage") as name:
        yield name


@pytest.fixture
async def recorded(database: str, tmp_path: Path, unique: str) -> AsyncIterator[Any]:
    """The control plane with one simulated PC sampling every 0.5 s, the metrics writer
    and the usage server on a fresh InfluxDB database."""
    pc = SimNode(f"u{unique}", 4000, 8192)
    args = (*AGENT_ARGS, "--metrics-s", "0.5")
    async with control_plane(tmp_path, (pc,), agent_args=args, jobs=JobSettings()) as plane:
        writer = MetricsWriter(InfluxV1(INFLUX_URL, database), flush_s=0.2)
        server = UsageServer(usage_query("v1", INFLUX_URL, database, ""))
        for service in (writer, server):
            await service.start(plane.bus)
        try:
            yield plane
        finally:
            for service in (server, writer):
                await service.stop(1.0)


async def test_bus_usage_agrees_with_the_cpu_time_the_replicas_measured(
    recorded: Any, tmp_path: Path, unique: str
) -> None:
    """Three replicas run a job of 24 calls of 0.6 s of CPU each. Each call answers with
    its process's CPU time so far (``time.process_time()``); the highest per process,
    summed, is what the replicas really used, measured by themselves. `bus usage` (from
    the agents' samples of the replicas' control groups, through InfluxDB) agrees within
    5 %, and reserved is at least what was used. The job's history has the CPU its calls
    took, as the workers timed them."""
    plane = recorded
    began = utc_now()
    await plane.quota("alice", 4000)
    worker = (sys.executable, "-m", "idlecloud", "worker", "tests.programs.burn_app:app")
    assert (await plane.deploy("alice", "burn", 3, cpu_millicores=1000, command=worker)).accepted
    for _ in range(300):  # up to 60 s for the replicas to start
        if await plane.running("alice") == 3:
            break
        await asyncio.sleep(0.2)
    app = App("alice", "burn")

    @app.task(executor="inline")
    def burn(cpu_s: float) -> dict[str, float]:  # served by the replicas, not here
        raise NotImplementedError

    async with TaskClient(plane.bus, app) as client:
        job = await client.submit_job(burn, [(0.6,)] * 24, name="burn")
        highest: dict[int, float] = {}
        async for _index, outcome in job.results():
            assert outcome.ok, outcome.error
            pid, cpu_s = int(outcome.value["pid"]), float(outcome.value["process_cpu_s"])
            highest[pid] = max(highest.get(pid, 0.0), cpu_s)
    measured_s = sum(highest.values())
    assert len(highest) == 3 and measured_s >= 24 * 0.6

    async def usage() -> dict[str, Any]:
        """`bus usage` in a process of its own (this one serves its question)."""
        shown = await asyncio.to_thread(bus_cli, "usage", "-n", "alice", "--since", "10m",
                                        "--json", url=plane.url)  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        document: dict[str, Any] = json.loads(shown.stdout)
        return document

    # the last calls' CPU reaches InfluxDB with the next samples (every 0.5 s)
    for _ in range(30):
        rows = (await usage())["rows"]
        if rows and rows[0]["used_cpu_s"] >= 0.95 * measured_s:
            break
        await asyncio.sleep(1.0)
    await asyncio.sleep(1.0)  # and one more sample: the replicas idle meanwhile
    (row,) = (await usage())["rows"]
    assert row["replicas"] == 3 and row["nodes"] == [f"u{unique}"]
    first_at, last_at = (datetime.fromisoformat(row[edge]) for edge in ("first_at", "last_at"))
    assert began < first_at < last_at <= utc_now()
    assert abs(row["used_cpu_s"] - measured_s) <= 0.05 * measured_s, (row, measured_s)
    assert row["reserved_cpu_s"] >= row["used_cpu_s"]
    history = await asyncio.to_thread(bus_cli, "job", "history", "-n", "alice", "--json",
                                      url=plane.url)  # fmt: skip
    (ended,) = json.loads(history.stdout)["jobs"]
    # the calls' own CPU (0.6 s each, as their workers timed them), startup not included
    assert 24 * 0.6 <= ended["cpu_s"] <= 24 * 0.6 * 1.05, ended
    plot = tmp_path / "usage.png"
    shown = await asyncio.to_thread(bus_cli, "usage", "-n", "alice", "--by", "day", "--plot",
                                    str(plot), url=plane.url)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "CPU-hours reserved" in shown.stdout and f"wrote {plot}" in shown.stdout
    assert plot.read_bytes().startswith(b"\x89PNG")
    print(shown.stdout)
    per_app = await asyncio.to_thread(bus_cli, "usage", "-n", "alice", url=plane.url)
    assert f"u{unique}" in per_app.stdout and f"{first_at:%Y-%m-%d %H:%M}" in per_app.stdout
    print(per_app.stdout)
    print(f"bus usage: {row['used_cpu_s']:.2f} CPU-s used; the replicas measured "
          f"{measured_s:.2f} s ({100 * (row['used_cpu_s'] / measured_s - 1):+.1f} %); "
          f"{row['reserved_cpu_s']:.1f} CPU-s reserved; the job's calls took "
          f"{ended['cpu_s']:.2f} CPU-s")  # fmt: skip


def _point(namespace: str, node: str, cpu_s: float, at: datetime) -> str:
    tags = f"app=w,namespace={namespace},node={node},replica={namespace}-1"
    fields = f"cpu_s={cpu_s},reserved_cpu_millicores=1000i"
    return f"replica,{tags} {fields} {int(at.timestamp()) * 10**9}"


async def test_a_user_sees_her_own_usage_only_and_by_pc_is_an_admins_question(
    scratch: tuple[BrokerInfo, Bus], signing_key: SigningKey, database: str, unique: str
) -> None:
    """Alice's and Bob's replicas both used CPU. Alice's question answers with hers only.
    Bob asking for Alice's figures (through her door, or his own door with her name in
    the body), for everyone's, or Alice asking by PC (the admins' door) gets nothing; an
    admin gets every namespace by PC."""
    info, bus = scratch
    login = Login(info, signing_key)
    alice, bob = f"alice{unique}", f"bob{unique}"
    start = utc_now() - timedelta(seconds=30)
    lines = [_point(ns, "edge", 10.0 * step, start + timedelta(seconds=step))
             for ns in (alice, bob) for step in range(11)]  # fmt: skip
    sink = InfluxV1(INFLUX_URL, database)
    await sink.write(lines)
    await sink.close()
    server = UsageServer(usage_query("v1", INFLUX_URL, database, ""))
    await server.start(bus)
    since = start - timedelta(seconds=1)
    try:
        async with (
            await login.connect("user", alice) as alice_bus,
            await login.connect("user", bob) as bob_bus,
            await login.connect("admin", f"root{unique}") as admin_bus,
        ):
            mine = await RpcClient(alice_bus, Owner.namespace(alice)).start()
            hers = await mine.call(UsageQuery(namespace=alice, since=since), UsageReply)
            assert [(r.namespace, r.used_cpu_s) for r in hers.rows] == [(alice, 100.0)]
            with pytest.raises(REFUSED):  # her door, and her reply queues, are hers
                his = await RpcClient(bob_bus, Owner.namespace(alice)).start()
                await his.call(UsageQuery(namespace=alice, since=since), UsageReply)
            with pytest.raises(REFUSED):  # everyone's, or by PC: the admins' door
                admins = await RpcClient(bob_bus, Owner.platform()).start()
                await admins.call(UsageQuery(since=since), UsageReply)
            with pytest.raises((*REFUSED, PublishRefused)):
                await mine.call(UsageQuery(namespace=alice, since=since, by="pc"), UsageReply)
            own = await RpcClient(bob_bus, Owner.namespace(bob)).start()
            answered = server.handled
            forged = UsageQuery(namespace=alice, since=since)  # through his door, her name
            his_door = names.route(UsageQuery(namespace=bob, since=since))
            await bob_bus.publish(forged, route=his_door, reply_to=own.reply_queue,
                                  correlation_id="forged")  # fmt: skip
            await wait_until(lambda: server.dead_lettered == 1, 10, "the forgery refused")
            assert server.handled == answered
            root = await RpcClient(admin_bus, Owner.platform()).start()
            every = await root.call(UsageQuery(since=since, by="pc"), UsageReply)
            assert {(r.namespace, r.node, r.used_cpu_s) for r in every.rows} >= {
                (alice, "edge", 100.0), (bob, "edge", 100.0)}  # fmt: skip
    finally:
        await server.stop(1.0)


async def test_while_influxdb_cannot_be_reached_the_answer_says_so(
    scratch: tuple[BrokerInfo, Bus],
) -> None:
    """A usage server whose InfluxDB is gone (nothing listens on its port) answers with
    the reason and no rows (`bus usage` prints it; the gateway answers 503)."""
    _info, bus = scratch
    gone = f"http://127.0.0.1:{free_port()}"
    server = UsageServer(usage_query("v1", gone, "idlecloud", ""))
    await server.start(bus)
    try:
        client = await RpcClient(bus, Owner.platform()).start()
        reply = await client.call(UsageQuery(since=utc_now() - timedelta(days=1)), UsageReply)
        await client.stop()
    finally:
        await server.stop(1.0)
    assert reply.rows == () and "the usage figures cannot be read" in reply.unavailable
    assert "Connection refused" in reply.unavailable
