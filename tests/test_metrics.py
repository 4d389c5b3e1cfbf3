"""The metrics writer against a real InfluxDB 1.6.7 (Debian's), with real agents' samples.

Line protocol is checked alone (pure); the writer consumes real events from the broker
and writes to a scratch database; an InfluxDB stopped mid-run loses no point.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import pytest
from aiohttp import web

from bus.connection import Bus
from idlecloud.dev.influx import (
    INFLUX_URL,
    ensure_influxdb,
    influx_query,
    scratch_database,
    stop_influxdb,
)
from idlecloud.dev.services import BrokerInfo, free_port
from nodeagent.sim import SimNode, Simulation
from schemas import (
    BridgeStatus,
    CordonChanged,
    MetricSample,
    NodePresence,
    Presence,
    PresenceCause,
    PresenceState,
    QuotaChanged,
    ReplicaUsage,
    Resources,
    StartReplica,
)
from services.metrics.influx import (
    InfluxRefused,
    InfluxUnavailable,
    InfluxV1,
    InfluxV2,
    influx_sink,
    query_v1,
)
from services.metrics.lineprotocol import line, points
from services.metrics.report import figures, held, hold_s, render, slug, visits
from services.metrics.writer import MetricsWriter

from .examples import EXAMPLES
from .helpers import DeadLetterTap, open_doors, wait_until

AT = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def sample(node: str, index: int, at: datetime = AT) -> MetricSample:
    return MetricSample(
        node=node, at=at.replace(microsecond=index), cpu_millicores=1500 + index, memory_mib=900,
        capacity=Resources(cpu_millicores=8000, memory_mib=16384),
        reserved=Resources(cpu_millicores=3000, memory_mib=1536), presence=PresenceState.IDLE,
        replicas=(ReplicaUsage(replica_id="stereo-1-aa", namespace="alice", app="stereo",
                               cpu_millicores=990, memory_mib=120),),
    )  # fmt: skip


def count(database: str, query: str) -> int:
    result = influx_query(query, database)["results"]
    assert isinstance(result, list)
    series = result[0].get("series") or [{"values": [[0, 0]]}]
    return int(series[0]["values"][0][1])


def test_line_protocol_escapes_and_types_every_value() -> None:
    point = line("node", {"node": "edge lab,1", "empty": ""}, {"cpu": 5, "note": 'say "hi"',
                 "ratio": 0.5, "busy": True}, AT)  # fmt: skip
    assert point == (
        'node,node=edge\\ lab\\,1 cpu=5i,note="say \\"hi\\"",ratio=0.5,busy=true '
        "1795694400000000000"
    )
    lines = points(sample("edge", 0))
    assert lines[0].startswith("node,node=edge,presence=idle cpu_millicores=1500i,")
    assert lines[1].startswith("replica,app=stereo,namespace=alice,node=edge,replica=stereo-1-aa ")
    assert points(EXAMPLES[BridgeStatus]) == [
        "kubebridge api_reachable=1i,nodes_mapped=4i,cordoned=1i,evicted=3i,refused=1i,"
        'pending=0i,last_error="" 1795694400000000000'
    ]
    left = points(sample("edge", 0).model_copy(update={"replicas": (), "departed": ("alice",)}))
    assert left[-1] == (  # alice's last replica left edge: her use of it drops to zero
        "namespace_usage,namespace=alice,node=edge replicas=0i,cpu_millicores=0i,memory_mib=0i "
        "1795694400000000000"
    )


@pytest.fixture
def database() -> Iterator[str]:
    with scratch_database() as name:
        yield name


@pytest.fixture
async def writer(bus: Bus, database: str) -> AsyncIterator[MetricsWriter]:
    started = MetricsWriter(InfluxV1(INFLUX_URL, database), flush_s=0.2, backoff_max_s=1.0)
    await started.start(bus)
    yield started
    await started.stop(2.0)


async def test_samples_from_real_agents_land_in_influxdb(
    broker: BrokerInfo, writer: MetricsWriter, database: str, unique: str, tmp_path: Path
) -> None:
    simulation = Simulation(tmp_path / "sim")
    node = f"m{unique}"
    simulation.up(broker.url, (SimNode(node, 2000, 2048),),
                  extra_args=("--metrics-s", "0.3", "--start-idle-s", "0"))  # fmt: skip
    try:
        query = f"SELECT count(cpu_millicores) FROM node WHERE node = '{node}'"
        await wait_until(lambda: count(database, query) >= 3, timeout_s=30, what="3 samples")
        simulation.login(node)
        presence = f"SELECT count(busy) FROM presence WHERE node = '{node}' AND busy = 1"
        await wait_until(lambda: count(database, presence) >= 1, timeout_s=30, what="busy")
    finally:
        simulation.down()


async def test_an_influxdb_outage_loses_no_sample(
    bus: Bus, writer: MetricsWriter, database: str, unique: str
) -> None:
    nodes = [f"o{unique}{i}" for i in range(8)]
    sent = 0
    await open_doors(bus, *nodes)

    async def publish(rounds: int) -> None:
        nonlocal sent
        for _ in range(rounds):
            await asyncio.gather(*(bus.publish(sample(n, sent % 1_000_000)) for n in nodes))
            sent += 1
            await asyncio.sleep(0.05)

    await publish(10)
    query = f"SELECT count(cpu_millicores) FROM node WHERE node =~ /^o{unique}/"
    # the first 80 are all stored first: one still in the writer's buffer as InfluxDB
    # stops could be written while it shuts down, after `before` was read (seen in CI)
    await wait_until(lambda: count(database, query) == 8 * 10, timeout_s=30, what="80 samples")
    stop_influxdb()
    try:
        await asyncio.sleep(0.5)  # the writer counts what it wrote once its loop turns
        before = writer.written
        await publish(60)  # 8 PCs x 60 samples while InfluxDB is down
        assert writer.written == before  # nothing was taken: it all waits in the broker
    finally:
        ensure_influxdb()
    await publish(10)
    await wait_until(lambda: count(database, query) == 8 * 80, timeout_s=60, what="every sample")


async def test_a_sample_influxdb_refuses_is_dead_lettered_and_the_rest_are_written(
    bus: Bus, writer: MetricsWriter, database: str, unique: str
) -> None:
    """InfluxDB refuses a replica point whose field already has another type; the sample
    carrying it is dead-lettered with InfluxDB's reason, every other sample is written."""
    seed = InfluxV1(INFLUX_URL, database)
    await seed.write([f'replica,node=seed cpu_millicores="text" {int(AT.timestamp() * 1e9)}'])
    await seed.close()  # the field's type is a string from now on
    dead = await DeadLetterTap(writer.spec.name).start(bus)
    good = [f"g{unique}{i}" for i in range(6)]
    bad = sample(f"b{unique}", 0)  # one replica point: refused
    later = f"l{unique}"
    await open_doors(bus, *good, bad.node, later)
    for index, node in enumerate(good[:3]):
        await bus.publish(sample(node, index).model_copy(update={"replicas": ()}))
    await bus.publish(bad)
    for index, node in enumerate(good[3:]):
        await bus.publish(sample(node, index).model_copy(update={"replicas": ()}))
    query = f"SELECT count(cpu_millicores) FROM node WHERE node =~ /^g{unique}/"
    await wait_until(lambda: count(database, query) == 6, timeout_s=30, what="the good samples")
    await wait_until(lambda: len(dead.messages) == 1, timeout_s=30, what="the dead letter")
    reason = dead.reasons()[0]
    assert "InfluxDB refused its points" in reason and "field type conflict" in reason, reason
    assert dead.header(0, "idlecloud-dead-queue") == writer.spec.name
    await bus.publish(sample(later, 0).model_copy(update={"replicas": ()}))  # nothing stalls
    query = f"SELECT count(cpu_millicores) FROM node WHERE node = '{later}'"
    await wait_until(lambda: count(database, query) == 1, timeout_s=30, what="a later sample")


async def test_every_dashboard_panel_query_returns_series_from_a_live_run(
    broker: BrokerInfo,
    bus: Bus,
    writer: MetricsWriter,
    database: str,
    unique: str,
    tmp_path: Path,
) -> None:
    """Grafana cannot run here: its provisioned dashboard's InfluxQL queries (panels and
    annotations) run straight against InfluxDB, with Grafana's macros substituted, after
    a short run of two simulated PCs, one with a replica and a person at the other."""
    simulation = Simulation(tmp_path / "sim")
    pcs = (SimNode(f"d{unique}", 2000, 2048), SimNode(f"e{unique}", 2000, 2048))
    simulation.up(broker.url, pcs, extra_args=("--metrics-s", "0.3", "--start-idle-s", "0",
                                               "--heartbeat-s", "0.3"))  # fmt: skip
    try:
        await asyncio.sleep(2.0)  # the agents consume their command queues
        await bus.publish(StartReplica(
            node=pcs[0].name, epoch=1, replica_id="spin-1-aa", namespace="alice", app="spin",
            image="local", command=(sys.executable, "-c", "import time; time.sleep(60)"),
            token="", reservation=Resources(cpu_millicores=500, memory_mib=64),
        ))  # fmt: skip
        simulation.login(pcs[1].name)
        quota = Resources(cpu_millicores=4000, memory_mib=4096)
        await bus.publish(QuotaChanged(namespace="alice", quota=quota, at=datetime.now(UTC)))
        await bus.publish(CordonChanged(node=pcs[0].name, action="cordon", at=datetime.now(UTC)))
        replicas = "SELECT count(cpu_millicores) FROM replica"
        await wait_until(lambda: count(database, replicas) >= 3, timeout_s=30, what="samples")
        await asyncio.sleep(1.0)
        dashboard = json.loads((ROOT / "compose/grafana/dashboards/idlecloud.json").read_text())
        queries = [t["query"] for p in dashboard["panels"] for t in p["targets"]]
        queries += [a["query"] for a in dashboard["annotations"]["list"]]
        assert len(queries) == 8
        empty = []
        for query in queries:
            grafana = query.replace("$timeFilter", "time > now() - 10m").replace(
                "$__interval", "1s"
            )
            result = influx_query(grafana, database)["results"]
            assert isinstance(result, list) and "error" not in result[0], (query, result)
            if not result[0].get("series"):
                empty.append(query)
        assert empty == []
        cordons = f"SELECT count(cordoned) FROM cordon WHERE node = '{pcs[0].name}'"
        assert count(database, cordons) == 1
        written = render(lambda q: query_v1(INFLUX_URL, database, q), tmp_path / "report", 600)
        assert [p.name for p in written] == [
            "cpu-used-by-each-app-per-pc.png", "replicas-per-pc-by-user.png",
            "reserved-cpu-over-capacity-per-pc.png",
            "each-namespace-s-cpu-in-use-against-its-quota.png",
            "cluster-cpu-capacity-against-reserved.png",
        ]  # fmt: skip
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
                   for p in written)  # fmt: skip
    finally:
        simulation.down()


async def test_the_influxdb_2_sink_speaks_api_v2_and_reports_a_refusal() -> None:
    """No InfluxDB 2.x server can run here. Debian's 1.6.7 has no /api/v2, so a write
    through influxdb-client reaches it and is refused: the sink reports that clearly."""
    ensure_influxdb()
    sink = InfluxV2(INFLUX_URL, token="t", org="lab", bucket="idlecloud")
    try:
        with pytest.raises(InfluxUnavailable, match="did not take the batch: \\(404\\)"):
            await sink.write(points(sample("edge", 0)))
    finally:
        await sink.close()


class InfluxV2StandIn:
    """A stand-in for the ``/api/v2/write`` of InfluxDB 1.8 and later, which cannot run here
    (Debian ships 1.6.7, and no image can be pulled): an aiohttp server on loopback that
    checks what influxdb-client sends as InfluxDB 1.8 would (the token, org, bucket and
    precision), keeps the lines, and refuses a line it cannot parse with InfluxDB's 400."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.seen: list[dict[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _write(self, request: web.Request) -> web.Response:
        self.seen.append({"authorization": request.headers.get("Authorization", ""),
                          **dict(request.query)})  # fmt: skip
        body = (await request.read()).decode()
        received = [text for text in body.split("\n") if text]
        if any(" " not in text for text in received):  # no fields: InfluxDB cannot parse it
            return web.json_response(
                {"code": "invalid", "message": "unable to parse: missing fields"}, status=400
            )
        self.lines.extend(received)
        return web.Response(status=204)

    async def __aenter__(self) -> InfluxV2StandIn:
        app = web.Application()
        app.router.add_post("/api/v2/write", self._write)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def test_the_v2_sink_writes_through_influxdb_client_as_influxdb_1_8_takes_it() -> None:
    """`IDLECLOUD_INFLUX_API=v2`: influxdb-client's write reaches /api/v2/write with the
    bucket, the 1.8 token and org and nanosecond precision; a refused line is a refusal,
    a server that is gone is unavailable."""
    async with InfluxV2StandIn() as influx:
        sink = influx_sink("v2", influx.url, "idlecloud")
        assert isinstance(sink, InfluxV2)
        try:
            lines = points(sample("edge", 0))
            await sink.write(lines)
            assert influx.lines == lines
            assert influx.seen[0] == {"authorization": "Token :", "org": "-",
                                      "bucket": "idlecloud", "precision": "ns"}  # fmt: skip
            with pytest.raises(InfluxRefused, match="unable to parse"):
                await sink.write(["no-fields-here"])
        finally:
            await sink.close()
    gone = influx_sink("v2", influx.url, "idlecloud")
    try:
        with pytest.raises(InfluxUnavailable):
            await gone.write(points(sample("edge", 1)))
    finally:
        await gone.close()
    with pytest.raises(ValueError, match="use v1"):
        influx_sink("v3", influx.url, "idlecloud")


async def test_the_writer_stores_samples_over_the_v2_api(bus: Bus, unique: str) -> None:
    """The metrics writer, given the v2 sink the settings name, stores an agent's sample
    from the real bus through influxdb-client (into the stand-in above)."""
    async with InfluxV2StandIn() as influx:
        writer = MetricsWriter(influx_sink("v2", influx.url, "idlecloud"), flush_s=0.2)
        await writer.start(bus)
        await open_doors(bus, f"v{unique}")
        try:
            await bus.publish(sample(f"v{unique}", 0))
            await wait_until(lambda: any(f"node=v{unique}" in text for text in influx.lines),
                             timeout_s=30, what="the sample over /api/v2/write")  # fmt: skip
        finally:
            await writer.stop(2.0)


async def test_the_writer_creates_its_database_if_it_is_missing(bus: Bus, unique: str) -> None:
    """`bus up --influx-db NAME` on a fresh InfluxDB: the first write finds no database,
    creates it and writes again."""
    name = f"test_new_{unique}"
    writer = MetricsWriter(InfluxV1(INFLUX_URL, name), flush_s=0.2, backoff_max_s=1.0)
    await writer.start(bus)
    await open_doors(bus, f"c{unique}")
    try:
        await bus.publish(sample(f"c{unique}", 0))
        query = f"SELECT count(cpu_millicores) FROM node WHERE node = 'c{unique}'"
        await wait_until(lambda: count(name, query) == 1, timeout_s=30, what="the sample")
    finally:
        await writer.stop(2.0)
        influx_query(f'DROP DATABASE "{name}"')


async def test_bus_report_on_a_recorded_run_draws_steps_zeros_and_a_labelled_visit() -> None:
    """A run recorded in InfluxDB as the writer records it (its line protocol): alice's
    replica on edge for 60 s, then gone (the sample names the departure), a person at
    edge for 20 s of it, and no sample in the last 80 s. The report's figures, read back
    from matplotlib: step lines; alice's replicas on edge 1, then 0 (the departure's zero,
    held like any value, never the old 1), and nothing after the last sample (a gap, not
    a line to the end); one shaded span, labelled "edge 20 s"."""
    start = datetime.now(UTC) - timedelta(seconds=200)
    events: list[MetricSample | NodePresence] = []
    for index in range(25):  # every 5 s for 120 s
        at = start + timedelta(seconds=5 * index)
        replicas = (
            (
                ReplicaUsage(
                    replica_id="stereo-1-aa",
                    namespace="alice",
                    app="stereo",
                    cpu_millicores=990,
                    memory_mib=120,
                ),
            )
            if index < 12
            else ()
        )
        events.append(sample("edge", 0, at).model_copy(update={
            "at": at, "replicas": replicas, "departed": ("alice",) if index == 12 else (),
        }))  # fmt: skip
    for seconds, state in ((30, PresenceState.BUSY), (50, PresenceState.IDLE)):
        cause = PresenceCause.SESSION if state is PresenceState.BUSY else PresenceCause.NONE
        events.append(NodePresence(node="edge", presence=Presence(
            state=state, cause=cause, since=start + timedelta(seconds=seconds))))  # fmt: skip
    with scratch_database() as database:
        sink = InfluxV1(INFLUX_URL, database)
        try:
            await sink.write([text for event in events for text in points(event)])
        finally:
            await sink.close()
        drawn = figures(lambda text: query_v1(INFLUX_URL, database, text), since_s=240)
    try:
        by_title = {panel.title: figure.axes[0] for panel, figure in drawn}
        axes = by_title["Replicas per PC, by user"]
        line = next(line for line in axes.get_lines() if line.get_label() == "alice on edge")
        assert line.get_drawstyle() == "steps-post"
        days = 1 / 86_400
        when, value = line.get_xdata(), line.get_ydata()
        x0 = float(mdates.date2num(start))  # type: ignore[no-untyped-call]

        def at(seconds: float) -> float:
            """The line's value nearest ``seconds`` after the run's start."""
            nearest = min(range(len(when)), key=lambda i: abs(when[i] - x0 - seconds * days))
            return float(value[nearest])

        assert at(20) == 1 and at(58) == 1  # running
        assert at(62) == 0 and at(70) == 0  # departed: zero, not the old value held
        assert all(at(t) != 1 for t in range(62, 200, 2))  # never the old value again
        assert math.isnan(at(160)) and math.isnan(at(195))  # no sample since 120 s: a gap
        spans = [text.get_text() for text in axes.texts]
        assert spans == ["edge 20 s"], spans
        assert len(axes.patches) == 1  # the visit's shaded span
        shown = ROOT / "artifacts" / "report"  # kept, to be looked at (docs/architecture.md)
        shown.mkdir(parents=True, exist_ok=True)
        for panel, figure in drawn:
            figure.savefig(shown / f"{slug(panel.title)}.png")
    finally:
        for _panel, figure in drawn:
            plt.close(figure)


def test_a_persons_visits_become_spans_with_the_pc_and_how_long() -> None:
    answer = {"results": [{"series": [
        {"name": "presence", "tags": {"node": "edge"}, "columns": ["time", "busy"],
         "values": [["2026-11-26T12:00:00Z", 0], ["2026-11-26T12:00:10Z", 1],
                    ["2026-11-26T12:00:22Z", 0], ["2026-11-26T12:05:00Z", 1]]},
        {"name": "presence", "tags": {"node": "ninja"}, "columns": ["time", "busy"],
         "values": [["2026-11-26T12:00:00Z", 0]]},
    ]}]}  # fmt: skip
    end = float(mdates.date2num(datetime(2026, 11, 26, 12, 10, tzinfo=UTC)))
    found = visits(answer, end)
    assert [(v.node, v.label) for v in found] == [("edge", "edge 12 s"), ("edge", "edge 5 min")]
    assert found[1].end == end  # still there when the window ends


def test_a_value_holds_between_samples_for_a_while_and_never_after_the_last() -> None:
    day = 1 / 86_400  # a second, in matplotlib's date numbers
    times = [index * 5 * day for index in range(8)]  # 5 s steps
    values: list[float | None] = [3, None, None, None, 2, None, None, None]
    shown = held(times, values, 12 * day)  # holds 12 s
    assert shown[:3] == [3, 3, 3] and shown[4:7] == [2, 2, 2]
    assert math.isnan(shown[3]) and math.isnan(shown[7])  # 15 s without a sample: a gap
    assert hold_s(1.0) == 15.0 and hold_s(9.0) == 27.0
