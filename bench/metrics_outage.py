"""InfluxDB stopped for 30 s under 8 simulated PCs: is every sample kept, at what memory?

Starts RabbitMQ and InfluxDB with the helpers the tests use (a scratch vhost and a scratch
database), the metrics writer in this process, and 8 simulated PCs (real agents) sending
a metric sample every second each. A tap counts every sample sent. After a warm-up,
InfluxDB is stopped for 30 s and started again; the run ends once InfluxDB holds as many
samples per PC as were sent. Prints the samples sent and stored, the seconds the backlog
took to drain, and the writer's resident memory growth during the outage.

Usage: python bench/metrics_outage.py [--outage-s 30] [--pcs 8]
The last line is `writer_rss_growth_mib: X` (goal: < 50, with no sample lost).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aio_pika.abc import AbstractIncomingMessage  # noqa: E402

from bus.connection import Bus  # noqa: E402
from bus.topology import declare_platform  # noqa: E402
from idlecloud.dev.influx import (  # noqa: E402
    INFLUX_URL,
    ensure_influxdb,
    influx_query,
    scratch_database,
    stop_influxdb,
)
from idlecloud.dev.services import scratch_vhost  # noqa: E402
from nodeagent.sim import SimNode, Simulation  # noqa: E402
from schemas import MetricSample  # noqa: E402
from services.metrics.influx import InfluxV1  # noqa: E402
from services.metrics.writer import MetricsWriter  # noqa: E402
from tests.helpers import collect_events  # noqa: E402


def stored(database: str) -> Counter[str]:
    answer = influx_query('SELECT count("cpu_millicores") FROM "node" GROUP BY "node"', database)
    results = answer["results"]
    assert isinstance(results, list)
    return Counter({s["tags"]["node"]: s["values"][0][1] for s in results[0].get("series") or []})


async def main(url: str, database: str, outage_s: float, pcs: int) -> None:
    me = psutil.Process()
    sent: Counter[str] = Counter()

    def count(message: AbstractIncomingMessage) -> None:
        sent[MetricSample.model_validate_json(message.body).node] += 1

    simulation = Simulation(Path(tempfile.mkdtemp(prefix="outage-")) / "sim")
    async with Bus(url, connection_name="outage bench") as bus:
        await declare_platform(bus)
        writer = MetricsWriter(InfluxV1(INFLUX_URL, database))
        await writer.start(bus)
        await collect_events(bus, "node.*.metrics", count)
        simulation.up(url, tuple(SimNode(f"pc{i}", 4000, 8192) for i in range(pcs)),
                      extra_args=("--metrics-s", "1", "--start-idle-s", "0"))  # fmt: skip
        try:
            await asyncio.sleep(10)  # warm up: agents started, samples flowing
            rss_before = me.memory_info().rss
            stop_influxdb()
            print(f"InfluxDB stopped for {outage_s:.0f} s")
            await asyncio.sleep(outage_s)
            rss_during = me.memory_info().rss
            ensure_influxdb()
            restarted = time.monotonic()
            simulation.down()  # no new samples: wait for the backlog to drain
            await asyncio.sleep(2)
            deadline = time.monotonic() + 120
            while stored(database) != sent:
                if time.monotonic() > deadline:
                    break  # reported below as lost samples
                await asyncio.sleep(0.5)
            drained_s = time.monotonic() - restarted
        finally:
            simulation.down()
            await writer.stop(5)
    kept = stored(database)
    print(f"pcs: {pcs}, samples sent: {sum(sent.values())}, stored: {sum(kept.values())}")
    print(f"lost: {sum((sent - kept).values())}, backlog drained in {drained_s:.1f} s")
    print(f"writer_rss_growth_mib: {(rss_during - rss_before) / 2**20:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--pcs", type=int, default=8)
    arguments = parser.parse_args()
    with scratch_vhost("bench") as broker, scratch_database("bench") as db:
        asyncio.run(main(broker.url, db, arguments.outage_s, arguments.pcs))
