"""Fixtures shared by the tests: a real RabbitMQ on 127.0.0.1, one fresh vhost per session."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from bus.connection import Bus
from bus.devdocker import busybox_image, ensure_docker
from bus.devservices import BrokerInfo, create_vhost, delete_vhost, scratch_vhost
from bus.topology import declare_platform

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
