"""The auth service on the real broker: keys issued and revoked, tokens for the broker.

The broker checks every broker token with its OAuth 2 backend; the service's signing key
is added with `rabbitmqctl add_uaa_key`. Connections are real, and a revoked key's
connection is really closed by the broker through the management API.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aio_pika
import aiohttp
import aiormq
import pytest
from yarl import URL

from bus.connection import Bus
from bus.credentials import fetch_broker_token, key_holder, url_with_token
from bus.errors import CredentialsRefused
from bus.rpc import RpcClient
from bus.sdk.client import TaskClient
from idlecloud.dev.services import RESOURCE_SERVER_ID, BrokerInfo, free_port, management
from schemas import (
    Amount,
    DeployRequest,
    KeyReply,
    KeysQuery,
    KeysReply,
    NodeHeartbeat,
    Owner,
    QuotaChanged,
    QuotaSet,
    ReplicaStatus,
    RequestResult,
    Resources,
    StartReplica,
    StopReplica,
    TokenIssue,
    TokenRevoke,
)
from services.auth.keyring import Keyring
from services.auth.service import AuthService, AuthSettings
from services.auth.tokens import SigningKey, broker_token, mint_api_key
from services.quota.service import QuotaManager

from .examples import deploy
from .helpers import Events, collect_events, wait_until
from .programs.sdk_tasks import make_app
from .test_cli import bus_cli


class Authority:
    """A running auth service and an admin's RPC client to it."""

    def __init__(
        self, broker: BrokerInfo, service: AuthService, admin: RpcClient, auth_url: str
    ) -> None:
        self.broker = broker
        self.service = service
        self.admin = admin
        self.auth_url = auth_url

    async def issue(self, role: str, subject: str, limits: Resources | None = None) -> KeyReply:
        request = TokenIssue(
            request_id=uuid.uuid4().hex[:16],
            role=role,
            subject=subject,
            name=f"{subject} (test)",
            limits=limits,
        )  # type: ignore[arg-type]
        return await self.admin.call(request, KeyReply, timeout_s=20)

    async def revoke(self, key_id: str) -> RequestResult:
        request = TokenRevoke(request_id=uuid.uuid4().hex[:16], key_id=key_id, reason="test")
        return await self.admin.call(request, RequestResult, timeout_s=20)


@pytest.fixture
async def authority(scratch: tuple[BrokerInfo, Bus], tmp_path: Path) -> AsyncIterator[Authority]:
    broker, bus = scratch
    key = SigningKey.generate()
    private, _public = key.save(tmp_path / "keys")
    port = free_port()
    service = AuthService(AuthSettings(private, vhost=broker.vhost, http_port=port),
                          retry_s=0.2)  # fmt: skip
    await service.start(bus)
    await wait_until(lambda: service.leadership.leading, what="the auth service to lead")
    admin = await RpcClient(bus, Owner.platform()).start()
    yield Authority(broker, service, admin, f"http://127.0.0.1:{port}")
    await admin.stop()
    await service.stop(1.0)


async def test_a_users_key_gets_broker_tokens_for_her_namespace_and_sets_her_quota(
    authority: Authority, unique: str
) -> None:
    broker = authority.broker
    namespace = f"al{unique}"
    reply = await authority.issue(
        "user", namespace, Resources(cpu_millicores=6000, memory_mib=8192)
    )
    assert reply.accepted and reply.key is not None and reply.api_key
    assert "api_key" not in repr(reply) or reply.api_key not in repr(reply)  # never logged
    state = authority.service.state
    assert state.quotas[namespace] == Amount(6000, 8192)
    assert state.keys[reply.key.key_id].subject == namespace

    token = await fetch_broker_token(reply.api_key, authority.auth_url)
    assert (token.role, token.subject, token.key_id) == ("user", namespace, reply.key.key_id)
    assert token.expires_at - time.time() <= 600
    async with Bus(
        url_with_token(broker.url, token), connection_name=token.connection_name("t")
    ) as mine:
        channel = await mine.channel()
        await channel.declare_queue(f"ns.{namespace}.mine", auto_delete=True)
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {reply.api_key}"}
        async with http.get(f"{authority.auth_url}/v1/whoami", headers=headers) as answer:
            assert (await answer.json())["subject"] == namespace
    listed = await authority.admin.call(KeysQuery(), KeysReply)
    assert reply.key.key_id in {key.key_id for key in listed.keys}


async def test_a_revoked_key_gets_no_token_and_its_connections_close_within_5_s(
    authority: Authority, unique: str
) -> None:
    broker = authority.broker
    reply = await authority.issue("user", f"rv{unique}")
    token = await fetch_broker_token(reply.api_key, authority.auth_url)
    connection = await aio_pika.connect(
        url_with_token(broker.url, token),
        client_properties={"connection_name": token.connection_name("t")},
    )
    closed = asyncio.Event()
    connection.close_callbacks.add(lambda *_args: closed.set())
    await asyncio.sleep(5.5)  # the management API lists a connection after its stats tick
    assert reply.key is not None
    started = time.monotonic()
    result = await authority.revoke(reply.key.key_id)
    assert result.accepted
    await asyncio.wait_for(closed.wait(), 5.0)
    assert time.monotonic() - started < 5.0
    with pytest.raises(CredentialsRefused, match="the API key was revoked"):
        await fetch_broker_token(reply.api_key, authority.auth_url)


async def test_a_revoked_keys_token_works_nowhere_5_s_later_not_even_swapped_in(
    authority: Authority, unique: str
) -> None:
    """The key's token sits in a connection opened as a replica (RabbitMQ 3.10 accepts an
    ``update-secret`` with another subject's token and keeps the replica's user name): 5 s
    after the revocation no operation with the key's permissions succeeds on that
    connection, nor on a new one opened with a token minted before the revocation; a
    replica with a token of its own connects again at once."""
    broker, namespace = authority.broker, f"sw{unique}"
    reply = await authority.issue("user", namespace)
    assert reply.key is not None
    token = await fetch_broker_token(reply.api_key, authority.auth_url)  # minted before
    replica_token, _ = broker_token(authority.service.key, RESOURCE_SERVER_ID, "replica",
                                    namespace, broker.vhost, key_id=f"r{unique}",
                                    app="stereo")  # fmt: skip
    as_replica = str(URL(broker.url).with_user("replica").with_password(replica_token))
    swapped = await aio_pika.connect(as_replica)
    closed = asyncio.Event()
    swapped.close_callbacks.add(lambda *_args: closed.set())
    channel = await swapped.channel()
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):  # a replica may not...
        await channel.declare_queue(f"ns.{namespace}.mine", auto_delete=True)
    await swapped.update_secret(token.access_token, reason="a user's token, swapped in")
    channel = await swapped.channel()  # ...but with the key's token swapped in, it may
    await channel.declare_queue(f"ns.{namespace}.mine", auto_delete=True)

    started = time.monotonic()
    assert (await authority.revoke(reply.key.key_id)).accepted
    await asyncio.wait_for(closed.wait(), 5.0)
    closed_after_s = time.monotonic() - started
    await asyncio.sleep(max(0.0, 5.0 - closed_after_s))
    with pytest.raises((aio_pika.exceptions.AMQPError, RuntimeError), match=r"closed|CLOSED"):
        await (await swapped.channel()).declare_queue(f"ns.{namespace}.after", auto_delete=True)
    with pytest.raises(aiormq.exceptions.ProbableAuthenticationError):  # aio-pika's connect
        await aiormq.connect(url_with_token(broker.url, token))  # leaves a close unawaited
    again = await aio_pika.connect(as_replica)  # the others reconnect with their own tokens
    await again.close()
    print(f"\nthe swapped-in connection closed {closed_after_s:.2f} s after the revocation")


async def test_the_leader_trusts_the_live_keys_again_when_its_connection_comes_back(
    authority: Authority, unique: str
) -> None:
    """A restarted broker forgets the keys it was told while it ran. Stand-in for the
    restart (which would disturb every other test): the key is forgotten behind the auth
    service's back and its broker connection is closed; once the connection is back, the
    live key's token opens connections again."""
    broker, service = authority.broker, authority.service
    reply = await authority.issue("user", f"rs{unique}")
    assert reply.key is not None
    token = await fetch_broker_token(reply.api_key, authority.auth_url)
    await Keyring().change(forget=[service.key.broker_key(reply.key.key_id).kid])
    with pytest.raises(aiormq.exceptions.ProbableAuthenticationError):
        await aiormq.connect(url_with_token(broker.url, token))
    before = service.bus.reconnects

    def close_the_services_connection() -> bool:
        listed = management("GET", f"vhosts/{quote(broker.vhost, safe='')}/connections")
        ours = [c["name"] for c in listed if isinstance(listed, list) and c["user"] == "guest"]
        for name in ours:
            management("DELETE", f"connections/{quote(name, safe='')}")
        return bool(ours)

    await wait_until(close_the_services_connection, 15, "the service's connection listed",
                     interval_s=0.5)  # fmt: skip
    await wait_until(lambda: service.bus.reconnects > before, 15, "the service to reconnect")

    async def opens() -> bool:
        try:
            connection = await aiormq.connect(url_with_token(broker.url, token))
        except aiormq.exceptions.ProbableAuthenticationError:
            return False
        await connection.close()
        return True

    deadline = time.monotonic() + 10
    while not await opens():
        assert time.monotonic() < deadline, "the live key's token was not trusted again"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("flaw", ["forged", "expired", "no header"])
async def test_a_bad_api_key_is_refused_with_the_reason(authority: Authority, flaw: str) -> None:
    if flaw == "forged":
        _key, api_key = mint_api_key(
            SigningKey.generate(authority.service.key.kid), "admin", "root"
        )
        expected = "not a valid API key: Signature verification failed"
    elif flaw == "expired":
        _key, api_key = mint_api_key(authority.service.key, "admin", "root", ttl_s=60,
                                     now=time.time() - 3600)  # fmt: skip
        expected = "the API key has expired"
    else:
        api_key, expected = "", "send the API key as `Authorization: Bearer <key>`"
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        async with http.post(f"{authority.auth_url}/v1/token", headers=headers) as answer:
            assert answer.status == 401
            assert (await answer.json())["error"].startswith(expected)


async def test_two_users_deploying_at_once_up_to_their_quotas_never_exceed_them(
    scratch: tuple[BrokerInfo, Bus], unique: str
) -> None:
    _broker, bus = scratch
    quota = QuotaManager(retry_s=0.2)
    await quota.start(bus)
    try:
        await wait_until(lambda: quota.leadership.leading, what="the quota manager to lead")
        admin = await RpcClient(bus, Owner.platform()).start()
        announced = await collect_events(
            bus, "idlecloud.quota.*", lambda m: QuotaChanged.model_validate_json(m.body)
        )
        users = (f"ua{unique}", f"ub{unique}")
        for user in users:
            quota_set = QuotaSet(request_id=uuid.uuid4().hex[:16], namespace=user,
                                 cpu_millicores=6000, memory_mib=65_536)  # fmt: skip
            assert (await admin.call(quota_set, RequestResult)).accepted
        clients = {user: await RpcClient(bus, Owner.namespace(user)).start() for user in users}

        async def one(user: str, index: int) -> bool:
            request: DeployRequest = deploy(user, f"app{index}", uuid.uuid4().hex[:16]).model_copy(
                update={"replicas": 1, "cpu_millicores": 1000, "memory_mib": 512}
            )
            return (await clients[user].call(request, RequestResult, timeout_s=30)).accepted

        await wait_until(lambda: len(announced) == 2, what="the quotas announced")
        assert {q.namespace: q.quota.cpu_millicores for q in announced} == dict.fromkeys(
            users, 6000
        )
        verdicts = await asyncio.gather(*(one(user, i) for user in users for i in range(10)))
        assert sum(verdicts[:10]) == 6 and sum(verdicts[10:]) == 6
        for user in users:
            assert quota.state.reserved(user) == Amount(6000, 3072)
            await clients[user].stop()
        await admin.stop()
    finally:
        await quota.stop(1.0)


async def test_an_admin_and_a_user_work_with_api_keys_through_the_bus_command(
    scratch: tuple[BrokerInfo, Bus], tmp_path: Path, unique: str
) -> None:
    """Real `bus` processes: the first admin key minted offline, a user's key issued with
    limits, her deploy admitted, bob's namespace refused by the broker, her key revoked."""
    broker, bus = scratch
    init = await asyncio.to_thread(bus_cli, "token", "init", str(tmp_path / "keys"))
    assert init.returncode == 0, init.stderr
    private = next(p for p in (tmp_path / "keys").glob("*.pem") if not p.name.endswith(".pub.pem"))
    assert private.stat().st_mode & 0o777 == 0o600  # the signing key: its owner's alone
    port = free_port()
    services = [AuthService(AuthSettings(private, vhost=broker.vhost, http_port=port),
                            retry_s=0.2), QuotaManager(retry_s=0.2)]  # fmt: skip
    for service in services:
        await service.start(bus)
        await wait_until(lambda s=service: s.leadership.leading, what=f"{service.name} leading")
    env = {"IDLECLOUD_AUTH_URL": f"http://127.0.0.1:{port}"}

    async def run(*arguments: str, key: str = "") -> subprocess.CompletedProcess[str]:
        extra = {**env, "IDLECLOUD_API_KEY": key} if key else env
        return await asyncio.to_thread(bus_cli, *arguments, url=broker.url, env=extra)

    try:
        minted = await run("token", "issue", "--role", "admin", "--subject", "root",
                           "--key-file", str(private), "--json")  # fmt: skip
        admin = json.loads(minted.stdout)["api_key"]
        assert "admin root" in (await run("whoami", key=admin)).stdout
        user = f"u{unique}"
        limits = ("--cpu-millicores", "2000", "--memory-mib", "2048")
        issued = await run("token", "issue", "--role", "user", "--subject", user, *limits,
                           "--json", key=admin)  # fmt: skip
        assert issued.returncode == 0, issued.stderr
        alice = json.loads(issued.stdout)
        listening = asyncio.create_task(
            run("events", "-n", user, "--seconds", "6", "--json", key=alice["api_key"])
        )
        await asyncio.sleep(2.5)  # her listener's queue is bound to her namespace's events
        deployed = await run("deploy", "x", "-n", user, "--image", "local", "--command", "true",
                             "--replicas", "2", key=alice["api_key"])  # fmt: skip
        assert deployed.returncode == 0, deployed.stderr
        heard = [json.loads(line) for line in (await listening).stdout.splitlines()]
        assert any(e["schema"] == "RequestResult" and e["accepted"] for e in heard), heard
        assert all(e.get("namespace") == user for e in heard)
        over = await run("deploy", "y", "-n", user, "--image", "local", "--command", "true",
                         key=alice["api_key"])  # fmt: skip
        assert over.returncode == 1 and "its quota is 2000m CPU" in " ".join(over.stderr.split())
        sneaky = await run("deploy", "x", "-n", f"bob{unique}", "--image", "local", "--command",
                           "true", key=alice["api_key"])  # fmt: skip
        assert sneaky.returncode == 1 and "the broker refused" in sneaky.stderr
        # her own worker and her own script, on her own machine, with her key
        worker_env = {**os.environ, **env, "IDLECLOUD_API_KEY": alice["api_key"],
                      "IDLECLOUD_URL": broker.url, "IDLECLOUD_NAMESPACE": user,
                      "IDLECLOUD_APP": "w"}  # fmt: skip
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "idlecloud",
            "worker",
            "tests.programs.sdk_app:app",
            env=worker_env,
        )
        try:
            os.environ.update({"IDLECLOUD_API_KEY": alice["api_key"], **env})
            url, name, _refresher = await key_holder(broker.url, "alice's script")
            async with (
                Bus(url, connection_name=name) as mine,
                TaskClient(mine, make_app(user, "w")) as client,
            ):
                squares = [v async for _i, v in client.map(client.app.tasks["square"], range(10))]
            assert sorted(squares) == [n * n for n in range(10)]
        finally:
            os.environ.pop("IDLECLOUD_API_KEY")
            worker.send_signal(signal.SIGTERM)
            await asyncio.wait_for(worker.wait(), 30)
        listed = json.loads((await run("token", "list", "--json", key=admin)).stdout)
        assert alice["key_id"] in {key["key_id"] for key in listed}
        assert (await run("token", "revoke", alice["key_id"], key=admin)).returncode == 0
        refused = await run("whoami", key=alice["api_key"])
        assert refused.returncode == 1 and "the API key was revoked" in refused.stderr
    finally:
        for service in reversed(services):
            await service.stop(1.0)


async def test_a_pc_runs_its_agent_with_its_own_key(
    authority: Authority, tmp_path: Path, unique: str
) -> None:
    """`bus agent run` with a PC's API key: it heartbeats and takes its commands with
    broker tokens limited to its own names; a key for another PC is refused."""
    node = f"pc{unique}"
    bus = authority.service.bus
    reply = await authority.issue("node", node)
    heard = Events(await collect_events(bus, f"node.{node}.#"))
    env = {**os.environ, "IDLECLOUD_API_KEY": reply.api_key,
           "IDLECLOUD_AUTH_URL": authority.auth_url}  # fmt: skip
    command = [sys.executable, "-m", "idlecloud", "agent", "run", "--url", authority.broker.url,
               "--utmp", str(tmp_path / "utmp"), "--state-dir", str(tmp_path / "state"),
               "--input-dir", str(tmp_path / "input"), "--start-idle-s", "0",
               "--heartbeat-s", "0.3"]  # fmt: skip
    wrong = await asyncio.to_thread(subprocess.run, [*command, "--node", f"x{node}"], env=env,
                                    capture_output=True, text=True, timeout=60)  # fmt: skip
    assert wrong.returncode == 2 and f"not for PC x{node}" in " ".join(wrong.stderr.split())
    agent = await asyncio.create_subprocess_exec(*command, "--node", node, env=env)
    try:
        await wait_until(lambda: bool(heard.of(NodeHeartbeat)), timeout_s=30, what="heartbeats")
        await bus.publish(StartReplica(
            node=node, epoch=1, replica_id="r1", namespace="alice", app="spin", image="local",
            command=(sys.executable, "-c", "import time; time.sleep(60)"), token="",
            reservation=Resources(cpu_millicores=100, memory_mib=64),
        ))  # fmt: skip
        await wait_until(lambda: bool(heard.of(ReplicaStatus)), timeout_s=30, what="a status")
        assert heard.of(ReplicaStatus)[0].state.value == "running"
        await bus.publish(StopReplica(node=node, epoch=1, replica_id="r1", grace_s=0))
    finally:
        agent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(agent.wait(), 30) == 0
