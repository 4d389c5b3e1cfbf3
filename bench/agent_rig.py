"""What the agent benchmarks share: one real `bus agent run` and its replicas, either runtime.

The Docker runtime's engine and test image come from the same helper the tests use
(`idlecloud.dev.docker`); the process runtime needs nothing more than the broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from idlecloud.dev.docker import TEST_IMAGE, busybox_image, ensure_docker
from nodeagent.runtime.identity import uid_block
from nodeagent.runtime.process import kill_recorded
from nodeagent.sim import node_containers, remove_containers
from schemas import Resources, StartReplica

__all__ = [
    "RUNTIMES",
    "end_replicas",
    "prepare",
    "remove_containers",
    "replica_dir",
    "replica_pids",
    "start_agent",
    "starts",
]

RUNTIMES = ("process", "docker")
ROOT = Path(__file__).resolve().parent.parent


def prepare(runtime: str) -> None:
    """Start dockerd and build the test image if the Docker runtime is measured."""
    if runtime == "docker":
        ensure_docker()
        busybox_image()


def replica_dir(node: str) -> Path:
    """Where a bench PC's replicas have their homes and tokens: a folder their own uids
    can reach (a temporary folder made by root is private to root)."""
    return Path("/var/tmp/idlecloud-bench") / node


async def start_agent(
    url: str, node: str, work: Path, runtime: str, *options: str
) -> asyncio.subprocess.Process:
    """A real agent for ``node`` keeping its records in ``work``, logging warnings only:
    8 cores and 8 GiB with nothing kept for a person, taking work at once; its replicas run
    under a uid block of their own (chosen by ``node``)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "idlecloud", "agent", "run", "--url", url, "--node", node,
        "--utmp", str(work / "utmp"), "--state-dir", str(work / "state"),
        "--replica-dir", str(replica_dir(node)),
        "--replica-uids", str(uid_block(f"bench/{node}")),
        "--input-dir", str(work / "input"), "--runtime", runtime,
        "--cpu-millicores", "8000", "--memory-mib", "8192", "--reserve-cpu-millicores", "0",
        "--reserve-memory-mib", "0", "--start-idle-s", "0", *options,
        cwd=ROOT, env={**os.environ, "IDLECLOUD_LOG_LEVEL": "WARNING"},
    )  # fmt: skip


def starts(
    node: str, runtime: str, count: int, *, busy: bool, cpu_millicores: int
) -> list[StartReplica]:
    """``count`` start commands for CPU-bound (``busy``) or sleeping replicas."""
    if runtime == "docker":
        image = TEST_IMAGE
        command = ("sh", "-c", "while :; do :; done") if busy else ("sleep", "3600")
    else:
        image = "local"
        body = "while True: pass" if busy else "import time; time.sleep(3600)"
        command = (sys.executable, "-c", body)
    return [
        StartReplica(
            node=node, epoch=1, replica_id=f"r{index}", namespace="bench", app="bench",
            image=image, command=command, token="-",
            reservation=Resources(cpu_millicores=cpu_millicores, memory_mib=64),
        )
        for index in range(count)
    ]  # fmt: skip


def replica_pids(node: str, work: Path, runtime: str) -> list[int]:
    """The first process of each running replica: from the agent's records, or dockerd."""
    if runtime == "process":
        records = (work / "state" / "replicas").glob("*.json")
        return [json.loads(record.read_text())["pid"] for record in records]
    listed = node_containers(node)
    if not listed:
        return []
    pids = subprocess.run(
        ["docker", "inspect", "-f", "{{if .State.Running}}{{.State.Pid}}{{end}}", *listed],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [int(pid) for pid in pids]


def end_replicas(node: str, work: Path, runtime: str) -> None:
    """Kill what the stopped agent of ``node`` left running (its replicas outlive it), a
    frozen one thawed so that it dies."""
    if runtime == "docker":
        remove_containers(node)
    for record in (work / "state" / "replicas").glob("*.json"):
        kill_recorded(record)
