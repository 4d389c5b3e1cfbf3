"""The gateway's REST API with a real broker, the real control plane and simulated PCs.

Keys are minted with the auth service's code and key; the gateway checks them with the
public half, as it would in production.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from schemas import TokenRevoke
from services.auth.tokens import SigningKey, mint_api_key
from services.gateway.service import Gateway, GatewaySettings

from .control_plane import SLEEPER, Plane, control_plane, free_port, thesis_pcs
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
    """The control plane, the gateway, and keys for alice, bob and an admin."""

    def __init__(self, plane: Plane, gateway: Gateway, base: str, key: SigningKey) -> None:
        self.plane, self.gateway, self.base, self.key = plane, gateway, base, key

    def mint(self, role: str, subject: str, **options: Any) -> str:
        return mint_api_key(self.key, role, subject, **options)[1]  # type: ignore[arg-type]


@pytest.fixture
async def rig(tmp_path: Path, unique: str) -> AsyncIterator[Rig]:
    key = SigningKey.generate()
    _private, public = key.save(tmp_path / "keys")
    async with control_plane(tmp_path, thesis_pcs(unique)[1:3]) as plane:
        await plane.quota("alice", 3000)
        await plane.quota("bob", 3000)
        port = free_port()
        gateway = Gateway(GatewaySettings(public, http_port=port))
        await gateway.start(plane.bus)
        try:
            yield Rig(plane, gateway, f"http://127.0.0.1:{port}", key)
        finally:
            await gateway.stop(1.0)


def deployment(app: str, replicas: int = 2) -> dict[str, Any]:
    return {"app": app, "image": "local", "command": list(SLEEPER), "replicas": replicas,
            "cpu_millicores": 1000, "memory_mib": 64}  # fmt: skip


async def test_credentials_are_checked_and_namespaces_kept_apart(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        alice = Api(http, rig.base, rig.mint("user", "alice"))
        for key, expected in (
            ("", "send an API key or a broker token"),
            (mint_api_key(SigningKey.generate(rig.key.kid), "admin", "root")[1], "not a valid"),
            (rig.mint("user", "alice", ttl_s=60, now=time.time() - 3600), "expired"),
            ("not-a-jwt", "the credential is not a JWT"),
        ):
            status, body = await Api(http, rig.base, key).call("GET", "/v1/namespaces/alice/quota")
            assert status == 401 and expected in body["error"], body
        status, body = await alice.call("GET", "/v1/namespaces/bob/deployments")
        assert (status, body["error"]) == (403, "user alice may not act for bob")
        assert (await alice.call("GET", "/v1/namespaces/alice/deployments")) == (200, [])
        status, body = await alice.call("POST", "/v1/pcs/edge/cordon")
        assert (status, body["error"]) == (403, "only an admin cordons, drains or uncordons a PC")
        status, pcs = await alice.call("GET", "/v1/pcs")
        assert status == 200 and len(pcs) == 2

        revoked = rig.mint("user", "alice")
        key_id = jwt.decode(revoked, options={"verify_signature": False})["jti"]
        await rig.gateway._journal.append_and_read(
            TokenRevoke(request_id=uuid.uuid4().hex[:16], key_id=key_id)
        )
        status, body = await Api(http, rig.base, revoked).call("GET", "/v1/namespaces/alice/quota")
        assert (status, body["error"]) == (401, "the API key was revoked")


async def test_alice_deploys_scales_and_deletes_through_http_within_her_quota(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        alice = Api(http, rig.base, rig.mint("user", "alice"))
        status, body = await alice.call("POST", "/v1/namespaces/alice/deployments",
                                        {"app": "x", "image": "local", "replicas": -1})  # fmt: skip
        assert status == 422 and "replicas" in body["fields"]
        assert (await alice.call("POST", "/v1/namespaces/alice/deployments",
                                 deployment("spin")))[0] == 201  # fmt: skip
        status, body = await alice.call("POST", "/v1/namespaces/alice/deployments",
                                        deployment("big", 3))  # fmt: skip
        assert status == 409 and "its quota is 3000m CPU" in body["error"]

        async def running() -> int:
            _status, view = await alice.call("GET", "/v1/namespaces/alice/deployments/spin")
            return int(view["running"])

        for _ in range(100):
            if await running() == 2:
                break
            await asyncio.sleep(0.2)
        assert await running() == 2
        assert (await alice.call("PATCH", "/v1/namespaces/alice/deployments/spin",
                                 {"replicas": 1}))[0] == 200  # fmt: skip
        status, quota = await alice.call("GET", "/v1/namespaces/alice/quota")
        assert status == 200 and quota["quota"]["cpu_millicores"] == 3000
        assert (await alice.call("DELETE", "/v1/namespaces/alice/deployments/spin"))[0] == 200
        status, body = await alice.call("GET", "/v1/namespaces/alice/deployments/ghost")
        assert (status, body["error"]) == (404, "alice has no app 'ghost'")
        status, body = await alice.call("DELETE", "/v1/namespaces/alice/deployments/ghost")
        assert status == 404
        admin = Api(http, rig.base, rig.mint("admin", "root"))
        assert (await admin.call("POST", f"/v1/pcs/{rig.plane.pcs[0].name}/cordon"))[0] == 200


async def test_alices_event_stream_carries_nothing_of_bobs(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        heard: list[dict[str, Any]] = []

        async def listen() -> None:
            headers = {"Authorization": f"Bearer {rig.mint('user', 'alice')}"}
            async with http.get(f"{rig.base}/v1/namespaces/alice/events", headers=headers) as r:
                async for raw in r.content:
                    if raw.startswith(b"data: "):
                        heard.append(json.loads(raw[6:]))

        listening = asyncio.create_task(listen())
        await asyncio.sleep(1.0)
        for user in ("bob", "alice"):
            api = Api(http, rig.base, rig.mint("user", user))
            assert (await api.call("POST", f"/v1/namespaces/{user}/deployments",
                                   deployment(f"{user}-app", 1)))[0] == 201  # fmt: skip
        await wait_until(lambda: any(e.get("app") == "alice-app" for e in heard), timeout_s=30,
                         what="alice's status event")  # fmt: skip
        await asyncio.sleep(2.0)  # bob's events, had they leaked, would have arrived too
        listening.cancel()
        assert heard and all(e.get("namespace") == "alice" for e in heard)


async def test_the_openapi_document_is_served_and_names_every_route(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{rig.base}/openapi.json") as r:
        document = await r.json()
    assert document["openapi"] == "3.0.3"
    assert set(document["paths"]) == {
        "/v1/namespaces/{namespace}/deployments", "/v1/namespaces/{namespace}/deployments/{app}",
        "/v1/namespaces/{namespace}/quota", "/v1/pcs", "/v1/pcs/{node}/{action}",
    }  # fmt: skip
    body = document["components"]["schemas"]["DeploymentBody"]
    assert "request_id" not in body["properties"] and "image" in body["required"]
