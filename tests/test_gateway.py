"""The gateway's REST API with a real broker, the real control plane and simulated PCs.

Keys are minted with the auth service's code and key; the gateway checks them with the
public half, as it would in production.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aio_pika.abc import AbstractIncomingMessage

from bus import names
from bus.sdk import App, Worker
from bus.topology import QueueSpec
from idlecloud.dev.influx import INFLUX_URL
from schemas import TokenRevoke
from services.auth.tokens import SigningKey, mint_api_key
from services.metrics.influx import InfluxV1

from .gateway_rig import Api, Rig, deployment
from .helpers import wait_until


async def test_credentials_are_checked_and_namespaces_kept_apart(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        alice = Api(http, rig.base, rig.mint("user", "alice"))
        for key, expected in (
            ("", "send an API key"),
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
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {
        "/openapi.json", "/v1/namespaces/{namespace}/deployments",
        "/v1/namespaces/{namespace}/deployments/{app}", "/v1/namespaces/{namespace}/quota",
        "/v1/namespaces/{namespace}/events", "/v1/pcs", "/v1/pcs/events",
        "/v1/pcs/{node}/{action}", "/v1/session", "/v1/namespaces/{namespace}/jobs",
        "/v1/namespaces/{namespace}/jobs/{job}", "/v1/namespaces/{namespace}/jobs/{job}/results",
        "/v1/namespaces/{namespace}/jobs/{job}/cancel", "/v1/namespaces/{namespace}/logs",
        "/v1/namespaces/{namespace}/history", "/v1/namespaces/{namespace}/usage",
    }  # fmt: skip
    body = document["components"]["schemas"]["DeploymentBody"]
    assert "request_id" not in body["properties"] and "image" in body["required"]
    # only the answers each operation can give: no 409 where nothing is admitted, no 404
    # where the path names nothing, and the real bodies of success and of 422
    deployments = document["paths"]["/v1/namespaces/{namespace}/deployments"]
    assert set(deployments["post"]["responses"]) == {"201", "401", "403", "404", "409", "422",
                                                     "503"}  # fmt: skip
    assert set(document["paths"]["/v1/pcs"]["get"]["responses"]) == {"200", "401", "503"}
    assert "409" not in deployments["get"]["responses"]
    error = document["components"]["schemas"]["Error"]
    assert set(error["properties"]) == {"error", "fields"} and error["required"] == ["error"]
    created = deployments["post"]["responses"]["201"]["content"]["application/json"]["schema"]
    assert created == {"$ref": "#/components/schemas/Accepted"}


#: What schemathesis holds every answer to: no 5xx, a status the document lists for the
#: operation, the content type it lists, and a body valid against the listed schema.
_CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
           "response_schema_conformance")  # fmt: skip


async def test_schemathesis_finds_every_answer_as_the_openapi_document_says(
    rig: Rig, tmp_path: Path
) -> None:
    """Schemathesis generates requests, valid and invalid, from /openapi.json (OpenAPI 3.1,
    written from the route table) and checks every answer against it (:data:`_CHECKS`): as
    an admin over any namespace, and as alice over her own (so requests reach the control
    plane). The event streams never end, so they are left out."""
    pinned = tmp_path / "alice.toml"
    pinned.write_text('[parameters]\n"path.namespace" = "alice"\n')
    for key, config in ((rig.mint("admin", "root"), ()),
                        (rig.mint("user", "alice"), ("--config-file", str(pinned)))):  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("schemathesis")), *config, "run",
            f"{rig.base}/openapi.json", "--checks", ",".join(_CHECKS),
            "--exclude-path-regex", "/events$", "--header", f"Authorization: Bearer {key}",
            "--max-examples", "40", "--seed", "7", "--request-timeout", "20", "--workers", "1",
            "--no-color", "--report", "junit", "--report-dir", str(tmp_path), cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await process.communicate()
        text = output.decode(errors="replace")
        assert process.returncode == 0, text[-6000:]
        tested = re.search(r"(\d+) generated, (\d+) passed", text)
        assert tested and int(tested[1]) > 100 and tested[1] == tested[2], text[-3000:]


async def test_the_gateway_sends_as_the_caller_not_as_itself(rig: Rig, unique: str) -> None:
    """A deploy through the gateway reaches the platform from the caller, as the broker
    vouches (its ``user_id``): the gateway relays on the caller's own connection and adds no
    power of its own."""
    senders: list[str | None] = []

    async def seen(message: AbstractIncomingMessage) -> None:
        senders.append(message.user_id)

    channel = await rig.plane.bus.channel()
    tap = await QueueSpec.private(
        f"idlecloud.test.senders.{unique}", (names.REQUESTS_EXCHANGE, "ns.alice.deploy.*")
    ).declare(channel)
    await tap.consume(seen, no_ack=True)
    key = rig.mint("user", "alice")
    key_id = jwt.decode(key, options={"verify_signature": False})["jti"]
    async with aiohttp.ClientSession() as http:
        status, body = await Api(http, rig.base, key).call(
            "POST", "/v1/namespaces/alice/deployments", deployment(f"g{unique}", replicas=1)
        )
    assert status == 201, body
    await wait_until(lambda: bool(senders), what="the deploy at the platform")
    assert senders == [f"user:alice:{key_id}"]
    await channel.close()


async def test_alice_submits_reads_and_deletes_a_job_over_http_and_bob_cannot_touch_it(
    rig: Rig, unique: str
) -> None:
    """A job through the gateway: submitted (its calls published as Alice), run by a worker,
    listed, shown, its results read as JSON lines by input index, deleted; Bob's key is
    refused at her namespace's paths and finds nothing of hers through his own."""
    app = App("alice", f"sq{unique}")

    @app.task(executor="inline")
    def square(x: int) -> int:
        return x * x

    async with aiohttp.ClientSession() as http:
        alice = Api(http, rig.base, rig.mint("user", "alice"))
        bob = Api(http, rig.base, rig.mint("user", "bob"))
        body = {
            "app": app.app,
            "task": "square",
            "name": "web",
            "inputs": [[x] for x in range(300)],
        }
        status, view = await alice.call("POST", "/v1/namespaces/alice/jobs", body)
        assert status == 201, view
        job = f"/v1/namespaces/alice/jobs/{view['job_id']}"
        assert (view["state"], view["total"], view["name"]) == ("running", 300, "web")
        worker = Worker(app, concurrency=4)
        await worker.start(rig.plane.bus)
        try:
            for _ in range(100):
                status, view = await alice.call("GET", job)
                if view["state"] == "done":
                    break
                await asyncio.sleep(0.2)
        finally:
            await worker.stop(1.0)
        assert (view["state"], view["done"]) == ("done", 300)
        status, listed = await alice.call("GET", "/v1/namespaces/alice/jobs")
        assert status == 200 and view["job_id"] in [j["job_id"] for j in listed["jobs"]]
        async with http.get(rig.base + job + "/results", headers={
            "Authorization": f"Bearer {alice.key}"}) as answer:  # fmt: skip
            assert answer.headers["Content-Type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in (await answer.text()).splitlines()]
        assert lines == [{"index": x, "ok": True, "value": x * x} for x in range(300)]
        for method, path in (("GET", job), ("GET", job + "/results"),
                             ("POST", job + "/cancel"), ("DELETE", job)):  # fmt: skip
            status, answer_body = await bob.call(method, path)
            assert status == 403, (method, path, answer_body)
            theirs = path.replace("/namespaces/alice/", "/namespaces/bob/")
            status, answer_body = await bob.call(method, theirs)
            assert status == 404, (method, theirs, answer_body)
        status, listed = await bob.call("GET", "/v1/namespaces/bob/jobs")
        assert status == 200 and listed["jobs"] == []
        status, history = await alice.call("GET", "/v1/namespaces/alice/history?since=1h")
        assert status == 200 and [(j["job_id"], j["state"], j["done"]) for j in history["jobs"]
                                  if j["job_id"] == view["job_id"]] == [(view["job_id"], "done",
                                                                          300)]  # fmt: skip
        assert (await bob.call("GET", "/v1/namespaces/alice/history"))[0] == 403
        status, his = await bob.call("GET", "/v1/namespaces/bob/history")
        assert status == 200 and his["jobs"] == []
        assert (await alice.call("DELETE", job))[0] == 200
        status, deleted = await alice.call("GET", job)
        assert status == 200 and deleted["state"] == "deleted"  # its history stays


async def test_alice_reads_her_replicas_last_lines_and_bob_cannot(rig: Rig) -> None:
    """``GET …/logs`` answers the last lines an app's replicas printed, read on the
    caller's own connection; Bob's key is refused at Alice's path and sees nothing of hers
    at his own."""
    talker = (sys.executable, "-u", "-c", "import time\nfor i in range(10**6):\n"
              "    print(f'line {i}')\n    time.sleep(0.1)")  # fmt: skip
    assert (await rig.plane.deploy("alice", "talker", 1, command=talker)).accepted
    async with aiohttp.ClientSession() as http:
        alice = Api(http, rig.base, rig.mint("user", "alice"))
        bob = Api(http, rig.base, rig.mint("user", "bob"))
        lines: list[dict[str, Any]] = []
        for _ in range(100):
            status, lines = await alice.call("GET", "/v1/namespaces/alice/logs?app=talker&tail=5")
            assert status == 200, lines
            if len(lines) == 5:
                break
            await asyncio.sleep(0.3)
        assert [line["app"] for line in lines] == ["talker"] * 5
        numbers = [int(line["text"].split()[1]) for line in lines]
        assert numbers == list(range(numbers[0], numbers[0] + 5))  # the last five, in order
        status, _ = await bob.call("GET", "/v1/namespaces/alice/logs?app=talker")
        assert status == 403
        status, his = await bob.call("GET", "/v1/namespaces/bob/logs?since=1h")
        assert (status, his) == (200, [])
        status, wrong = await alice.call("GET", "/v1/namespaces/alice/logs?since=yesterday")
        assert status == 422 and "30s, 10m, 2h or 7d" in wrong["error"]


async def test_usage_over_http_is_ones_own_namespaces_and_by_pc_an_admins(
    rig: Rig, unique: str
) -> None:
    """``GET …/usage`` answers the namespace's CPU from InfluxDB (points written into the
    rig's database here, as the metrics writer would); Bob's key is refused at Alice's
    path, Alice's when she asks by PC, and an admin's gets it by PC; a span past ten
    years is a 422."""
    at = int(time.time()) - 20
    sink = InfluxV1(INFLUX_URL, rig.database)
    await sink.write([f"replica,app=web,namespace=alice,node=edge,replica=r{unique} "
                      f"cpu_s={step}.0,reserved_cpu_millicores=500i {(at + step) * 10**9}"
                      for step in range(11)])  # fmt: skip
    await sink.close()
    async with aiohttp.ClientSession() as http:
        alice = Api(http, rig.base, rig.mint("user", "alice"))
        bob = Api(http, rig.base, rig.mint("user", "bob"))
        admin = Api(http, rig.base, rig.mint("admin", "root"))
        status, usage = await alice.call("GET", "/v1/namespaces/alice/usage?since=1h")
        assert status == 200, usage
        assert [(r["app"], r["used_cpu_s"], r["reserved_cpu_s"]) for r in usage["rows"]
                ] == [("web", 10.0, 5.0)]  # fmt: skip
        for caller, path, expected in (
            (bob, "/v1/namespaces/alice/usage", 403),
            (alice, "/v1/namespaces/alice/usage?by=pc", 403),
            (alice, "/v1/namespaces/alice/usage?by=week", 422),
            (alice, "/v1/namespaces/alice/usage?since=yesterday", 422),
            (alice, "/v1/namespaces/alice/usage?since=4000d", 422),
            (alice, "/v1/namespaces/alice/history?since=99999999d", 422),
        ):
            status, answer = await caller.call("GET", path)
            assert status == expected, (path, answer)
        status, by_pc = await admin.call("GET", "/v1/namespaces/alice/usage?by=pc")
        assert status == 200 and [r["node"] for r in by_pc["rows"]] == ["edge"]
