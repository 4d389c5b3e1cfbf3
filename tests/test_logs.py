"""Replicas' output on the broker: shipped by their agents within limits, relayed by the
placement leader only for replicas placed on the sending PC, read by their namespace."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

import aiormq
import pytest

from bus import names
from bus.connection import Bus
from bus.logs import read_logs
from idlecloud.dev.services import BrokerInfo, management
from nodeagent.loglimit import LogLimits
from nodeagent.reports import heartbeat
from nodeagent.runtime.spec import ReplicaInfo
from schemas import (
    Amount,
    LogBatch,
    LogLine,
    Presence,
    PresenceCause,
    PresenceState,
    ReplicaState,
    utc_now,
)
from services.auth.tokens import SigningKey
from services.placement.service import Placement

from .control_plane import FAST, Plane, control_plane, thesis_pcs
from .helpers import DeadLetterTap, wait_until
from .login import Login
from .test_cli import bus_cli

REFUSED = (aiormq.exceptions.ChannelAccessRefused, aiormq.exceptions.ChannelClosed)
TALKER = (sys.executable, "-u", "-c", "import time\nfor i in range(100000):\n"
          "    print(f'line {i}')\n    time.sleep(0.05)")  # fmt: skip


async def running(plane: Plane, namespace: str, count: int) -> None:
    for _ in range(300):
        if await plane.running(namespace) == count:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{namespace} never ran {count} replicas")


async def test_a_replicas_lines_reach_bus_logs_and_outlive_its_pc(
    broker: BrokerInfo, unique: str, tmp_path: Path
) -> None:
    pcs = thesis_pcs(unique)[1:3]
    async with control_plane(tmp_path, pcs) as plane:
        await plane.quota("alice", 8000)
        assert (await plane.deploy("alice", "talker", 2, command=TALKER)).accepted
        await running(plane, "alice", 2)
        since = utc_now() - timedelta(minutes=1)

        async def seen() -> dict[str, list[str]]:
            lines: dict[str, list[str]] = {}
            async for item in read_logs(plane.bus, "alice", since=since, app="talker"):
                if item is not None:
                    lines.setdefault(item[0].replica_id, []).append(item[1].text)
            return lines

        for _ in range(50):
            lines = await seen()
            if len(lines) == 2 and all(len(v) >= 20 for v in lines.values()):
                break
            await asyncio.sleep(0.3)
        assert len(lines) == 2, lines.keys()
        for texts in lines.values():
            assert texts[:20] == [f"line {i}" for i in range(20)]
        shown = await asyncio.to_thread(bus_cli, "logs", "talker", "-n", "alice", "--since", "5m",
                                        url=plane.url)  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert "| line 0" in shown.stdout
        for pc in pcs:
            plane.simulation.kill(pc.name)
        after = await seen()
        assert all(len(after[r]) >= len(lines[r]) for r in lines)  # kept on the broker


FLOOD = (
    sys.executable,
    "-u",
    "-c",
    """
import sys, time
chunk = ("x" * 99 + "\\n").encode() * 1000
start = time.time()
while time.time() - start < 4:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
    time.sleep(0.01)
time.sleep(3)
print("flood over", flush=True)
time.sleep(3600)
""",
)


async def test_a_flooding_replica_is_cut_to_its_limit_and_its_file_kept_small(
    broker: BrokerInfo, unique: str, tmp_path: Path
) -> None:
    """A replica writes about 10 MB/s for 4 s, then a line 3 s later. Its agent ships at
    most its byte rate (32 KiB/s, 2 s of burst) and a marker line saying how much it
    dropped; the line after the flood arrives; the local file never passes its bound
    (8 MiB) by more than one read's worth; the broker's memory stays within 64 MiB of
    where it was."""
    pcs = thesis_pcs(unique)[1:2]
    limits = LogLimits()
    async with control_plane(tmp_path, pcs) as plane:
        await plane.quota("alice", 4000)
        before_mib = broker_memory_mib()
        since = utc_now()
        assert (await plane.deploy("alice", "flood", 1, command=FLOOD)).accepted
        await running(plane, "alice", 1)
        files = plane.simulation.state_dir(pcs[0].name)
        largest, broker_peak_mib = 0, before_mib
        for _ in range(100):  # 10 s
            sizes = [path.stat().st_size for path in files.rglob("*.log")]
            largest = max([largest, *sizes])
            broker_peak_mib = max(broker_peak_mib, broker_memory_mib())
            await asyncio.sleep(0.1)
        texts: list[str] = []
        async for item in read_logs(plane.bus, "alice", since=since, app="flood"):
            if item is not None:
                texts.append(item[1].text)
    shipped = sum(len(text) + 1 for text in texts if text.startswith("xxx"))
    markers = [text for text in texts if text.startswith("[idlecloud]")]
    assert texts[-1] == "flood over", texts[-3:]
    assert markers and "dropped: over this replica's limit of 100 lines/s" in markers[0]
    assert shipped <= limits.bytes_per_s * (4 + limits.burst_s + 1), shipped
    assert largest <= limits.file_bytes + 2.5 * 1024**2, largest
    assert broker_peak_mib - before_mib < 64, (before_mib, broker_peak_mib)
    print(
        f"flood: shipped {shipped} bytes in {len(texts)} lines, {len(markers)} markers; "
        f"largest local file {largest / 1024**2:.1f} MiB; broker memory "
        f"{before_mib:.0f} -> at most {broker_peak_mib:.0f} MiB"
    )


def broker_memory_mib() -> float:
    nodes = management("GET", "nodes")
    assert isinstance(nodes, list)
    return float(nodes[0]["mem_used"]) / 1024**2


async def test_a_pc_ships_output_only_for_its_own_replicas_and_bob_cannot_read_alices(
    scratch: tuple[BrokerInfo, Bus], signing_key: SigningKey, unique: str
) -> None:
    """With real tokens: PC ``edge`` reports replica r1 of alice/app. Output for r1 from
    ``edge`` lands in Alice's log stream; the same batch from another PC, or from ``edge``
    naming another namespace or app, is dead-lettered with why and lands nowhere. Bob's
    key may not read Alice's logs; Alice's may."""
    info, bus = scratch
    login = Login(info, signing_key)
    edge, evil = f"edge{unique}", f"evil{unique}"
    placement = Placement(FAST, retry_s=0.2)
    await placement.start(bus)
    tap = await DeadLetterTap(names.service_queue("placement", "logs")).start(bus)
    try:
        await wait_until(lambda: placement.leadership.leading, 10, "placement to lead")
        replica = ReplicaInfo("app-1-0a1b2c3d", "alice", "app", ReplicaState.RUNNING,
                              Amount(1000, 64))  # fmt: skip
        idle = Presence(state=PresenceState.IDLE, cause=PresenceCause.NONE, since=utc_now())
        async with (
            await login.connect("node", edge) as edge_bus,
            await login.connect("node", evil) as evil_bus,
            await login.connect("user", "alice") as alice_bus,
            await login.connect("user", "bob") as bob_bus,
        ):
            await edge_bus.publish(heartbeat(edge, 1, Amount(4000, 4096), Amount(4000, 4096),
                                             idle, [replica], {}, "process"))  # fmt: skip
            await wait_until(lambda: edge in placement.registry.nodes, 10, "edge's heartbeat")
            since = utc_now()

            def batch(node: str, text: str, **change: str) -> LogBatch:
                fields = {"node": node, "replica_id": replica.replica_id, "namespace": "alice",
                          "app": "app", "seq": 0, **change}  # fmt: skip
                return LogBatch(**fields, lines=(LogLine(at=utc_now(), text=text),))

            await evil_bus.publish(batch(evil, "forged by another PC"))
            await edge_bus.publish(batch(edge, "for bob", namespace="bob"))
            await edge_bus.publish(batch(edge, "for another app", app="other"))
            await edge_bus.publish(batch(edge, "hello from r1"))
            await wait_until(lambda: len(tap.reasons()) == 3, 10, "three refusals")
            assert any(f"from {evil}, but that replica is alice/app on {edge}" in reason
                       for reason in tap.reasons()), tap.reasons()  # fmt: skip
            texts: list[str] = []
            for _ in range(50):
                texts = [item[1].text async for item in read_logs(alice_bus, "alice", since=since)
                         if item is not None]  # fmt: skip
                if texts:
                    break
                await asyncio.sleep(0.1)
            assert texts == ["hello from r1"]
            with pytest.raises(REFUSED):
                async for _item in read_logs(bob_bus, "alice", since=since):
                    pass
    finally:
        await placement.stop(1.0)
