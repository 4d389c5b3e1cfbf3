"""The metrics writer against a real InfluxDB 1.6.7 (Debian's), with real agents' samples.

Line protocol is checked alone (pure); the writer consumes real events from the broker
and writes to a scratch database; an InfluxDB stopped mid-run loses no point.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bus.connection import Bus
from bus.devinflux import INFLUX_URL, ensure_influxdb, influx_query, scratch_database, stop_influxdb
from bus.devservices import BrokerInfo
from nodeagent.sim import SimPC, Simulation
from schemas import (
    MetricSample,
    PresenceState,
    ReplicaUsage,
    Resources,
)
from services.metrics.influx import InfluxV1
from services.metrics.lineprotocol import line, points
from services.metrics.writer import MetricsWriter

from .helpers import wait_until

AT = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


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
    simulation.up(broker.url, (SimPC(node, 2000, 2048),),
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

    async def publish(rounds: int) -> None:
        nonlocal sent
        for _ in range(rounds):
            await asyncio.gather(*(bus.publish(sample(n, sent % 1_000_000)) for n in nodes))
            sent += 1
            await asyncio.sleep(0.05)

    await publish(10)
    stop_influxdb()
    try:
        await publish(60)  # 8 PCs x 60 samples while InfluxDB is down
        assert writer.written < 8 * 70 * 2
    finally:
        ensure_influxdb()
    await publish(10)
    query = f"SELECT count(cpu_millicores) FROM node WHERE node =~ /^o{unique}/"
    await wait_until(lambda: count(database, query) == 8 * 80, timeout_s=60, what="every sample")
