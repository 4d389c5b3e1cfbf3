"""Fixtures shared by the tests: a real RabbitMQ on 127.0.0.1, one fresh vhost per session."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bus.connection import Bus
from bus.topology import declare_platform
from idlecloud.dev.docker import busybox_image, ensure_docker
from idlecloud.dev.services import BrokerInfo, create_vhost, delete_vhost, scratch_vhost
from nodeagent.runtime.cgroup import Mounts
from nodeagent.runtime.hierarchy import replica_groups

from .gateway_rig import rig  # noqa: F401  (a fixture: the gateway on a control plane)
from .login import login, signing_key  # noqa: F401  (fixtures: broker tokens of any principal)


@pytest.fixture(scope="session")
async def broker() -> AsyncIterator[BrokerInfo]:
    """A fresh vhost on the local broker (started if needed) with the platform topology."""
    with scratch_vhost("test") as info:
        async with Bus(info.url, connection_name="pytest setup") as bus:
            await declare_platform(bus)
        yield info


@pytest.fixture
async def bus(broker: BrokerInfo) -> AsyncIterator[Bus]:
    """A connected bus on the session's vhost."""
    async with Bus(broker.url, connection_name="pytest") as connected:
        yield connected


@pytest.fixture
def unique() -> str:
    """A short DNS-label-safe suffix, so each test's names are its own."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def ledger(unique: str) -> Iterator[Path]:
    """A file every replica may append to: they have uids of their own, and cannot reach
    into a test's tmp_path."""
    shared = Path(tempfile.mkdtemp(prefix=f"ledger-{unique}-"))
    shared.chmod(0o777)
    path = shared / "ledger"
    path.touch()
    path.chmod(0o666)
    yield path
    shutil.rmtree(shared)


@pytest.fixture(scope="session")
def docker_image() -> str:
    """The locally built busybox test image, on a dockerd started if needed."""
    ensure_docker()
    return busybox_image()


@pytest.fixture
async def scratch() -> AsyncIterator[tuple[BrokerInfo, Bus]]:
    """A vhost of this test's own, with the platform declared: for tests that run
    control-plane services, whose durable queues and journal would outlive them."""
    info = create_vhost(f"scratch-{uuid.uuid4().hex[:10]}")
    try:
        async with Bus(info.url, connection_name="pytest scratch") as connected:
            await declare_platform(connected)
            yield info, connected
    finally:
        delete_vhost(info.vhost)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After the whole run no replica process is left in any replica's group, in any
    hierarchy (asserted), and the groups the tests made are removed (asserted: one that
    cannot be removed still holds something). It looks at the whole machine, so it runs
    where nothing else does: in CI (``CI`` set), or when IDLECLOUD_CHECK_LEFTOVERS=1 asks
    (on a developer's machine another run's or the demo's replicas would count)."""
    yield
    if not (os.environ.get("CI") or os.environ.get("IDLECLOUD_CHECK_LEFTOVERS") == "1"):
        return
    groups = replica_groups(Mounts.read(), ("idlecloud-test", "idlecloud"))
    left = {str(group): procs for group in groups
            if (procs := (group / "cgroup.procs").read_text().split())}  # fmt: skip
    for group in groups:  # deepest first
        with contextlib.suppress(OSError):
            group.rmdir()
    assert left == {}, f"replica processes left behind: {left}"
    stuck = [str(group) for group in groups if group.exists()]
    assert stuck == [], f"replica groups that cannot be removed: {stuck}"
