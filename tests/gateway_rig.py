"""The gateway with the real control plane and simulated PCs, and keys for alice, bob and
an admin: shared by the REST API's tests and the page's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from idlecloud.dev.influx import INFLUX_URL, scratch_database
from idlecloud.dev.services import free_port
from services.auth.service import AuthService
from services.auth.tokens import SigningKey, mint_api_key
from services.gateway.service import Gateway, GatewaySettings
from services.jobs.service import JobSettings
from services.metrics.usage_server import UsageServer, usage_query

from .control_plane import SLEEPER, Plane, control_plane, thesis_pcs
from .helpers import wait_until


class Api:
    """HTTP calls to the gateway with one credential."""

    def __init__(self, http: aiohttp.ClientSession, base: str, key: str) -> None:
        self.http, self.base, self.key = http, base, key

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as r:
            return r.status, await r.json(content_type=None)


class Rig:
    """The control plane, the gateway (with a usage server on a fresh InfluxDB database),
    and keys for alice, bob and an admin."""

    def __init__(
        self, plane: Plane, gateway: Gateway, base: str, key: SigningKey, database: str
    ) -> None:
        self.plane, self.gateway, self.base, self.key = plane, gateway, base, key
        #: The InfluxDB database the rig's usage server reads.
        self.database = database

    def mint(self, role: str, subject: str, **options: Any) -> str:
        return mint_api_key(self.key, role, subject, **options)[1]  # type: ignore[arg-type]


@pytest.fixture
async def rig(tmp_path: Path, unique: str) -> AsyncIterator[Rig]:
    """The gateway relays each caller's requests on a connection of the caller's own, so
    the control plane runs the auth service too (its key signs the callers' keys)."""
    pcs = thesis_pcs(unique)[1:3]
    async with control_plane(tmp_path, pcs, token_s=600, jobs=JobSettings()) as plane:
        auth = next(s for s in plane.services if isinstance(s, AuthService))
        await wait_until(lambda: auth.leadership.leading, what="the auth service to lead")
        public = tmp_path / "gateway" / "auth.pub.pem"
        public.parent.mkdir()
        public.write_bytes(auth.key.public_pem)
        await plane.quota("alice", 3000)
        await plane.quota("bob", 3000)
        port = free_port()
        auth_url = f"http://127.0.0.1:{auth.settings.http_port}"
        gateway = Gateway(GatewaySettings(public, http_port=port, auth_url=auth_url))
        with scratch_database("rig") as database:
            usage = UsageServer(usage_query("v1", INFLUX_URL, database, ""))
            await usage.start(plane.bus)
            await gateway.start(plane.bus)
            try:
                yield Rig(plane, gateway, f"http://127.0.0.1:{port}", auth.key, database)
            finally:
                await gateway.stop(1.0)
                await usage.stop(1.0)


def deployment(app: str, replicas: int = 2) -> dict[str, Any]:
    return {"app": app, "image": "local", "command": list(SLEEPER), "replicas": replicas,
            "cpu_millicores": 1000, "memory_mib": 64}  # fmt: skip
