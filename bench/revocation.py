"""Milliseconds from revoking an API key until nothing holds its permissions, and what it
costs everyone else.

Starts RabbitMQ with the helper the tests use (a scratch vhost) and the auth service in
this process. Each trial issues a user's key, trades it for a broker token, and swaps
that token (AMQP ``update-secret``) into a connection opened as a replica, the case a
revocation by connection name cannot find; a bystander (another user's robust
connection) stays connected throughout. Then it revokes the key and times:

- ``revoke``: until the admin has the auth service's answer (the key's broker key is gone
  from the broker and every token connection closed, in one ``rabbitmqctl eval``);
- ``swapped_closed``: until the connection holding the key's token is closed;
- ``bystander_back``: until the bystander has reconnected with its own token and
  published again.

After each trial a new connection with the revoked key's token is tried (it must be
refused). Usage: python bench/revocation.py [--trials N]; prints the sample counts, p50
and p99 (100 trials or more) or the maximum.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import aiormq
from yarl import URL

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.figures import summary  # noqa: E402
from bus.connection import Bus  # noqa: E402
from bus.credentials import fetch_broker_token, url_with_token  # noqa: E402
from bus.rpc import RpcClient  # noqa: E402
from bus.topology import declare_platform  # noqa: E402
from idlecloud.dev.services import RESOURCE_SERVER_ID, free_port, scratch_vhost  # noqa: E402
from schemas import (  # noqa: E402
    AppsQuery,
    KeyReply,
    Owner,
    RequestResult,
    TokenIssue,
    TokenRevoke,
)
from services.auth.service import AuthService, AuthSettings  # noqa: E402
from services.auth.tokens import SigningKey, broker_token  # noqa: E402
from tests.helpers import wait_until  # noqa: E402


async def _issue(admin: RpcClient, subject: str) -> KeyReply:
    request = TokenIssue(request_id=uuid.uuid4().hex[:16], role="user", subject=subject)
    reply = await admin.call(request, KeyReply, timeout_s=30)
    assert reply.accepted and reply.key is not None, reply.reason
    return reply


async def _trial(url: str, vhost: str, auth: AuthService, admin: RpcClient, auth_url: str,
                 bystander: Bus) -> tuple[float, float, float]:  # fmt: skip
    reply = await _issue(admin, "victim")
    assert reply.key is not None
    token = await fetch_broker_token(reply.api_key, auth_url)
    replica_token, _ = broker_token(auth.key, RESOURCE_SERVER_ID, "replica", "victim", vhost,
                                    key_id=uuid.uuid4().hex[:12], app="stereo")  # fmt: skip
    swapped = await aio_pika.connect(str(URL(url).with_user("r").with_password(replica_token)))
    await swapped.update_secret(token.access_token, reason="swapped in")
    closed = asyncio.Event()
    swapped.close_callbacks.add(lambda *_args: closed.set())
    reconnects = bystander.reconnects
    started = time.perf_counter()
    result = await admin.call(TokenRevoke(request_id=uuid.uuid4().hex[:16],
                                          key_id=reply.key.key_id, reason="bench"),
                              RequestResult, timeout_s=30)  # fmt: skip
    revoked_ms = (time.perf_counter() - started) * 1000
    assert result.accepted, result.reason
    await asyncio.wait_for(closed.wait(), 30)
    closed_ms = (time.perf_counter() - started) * 1000
    await wait_until(lambda: bystander.reconnects > reconnects, 30, "the bystander to reconnect")
    await bystander.publish(AppsQuery(namespace="bystander"), timeout_s=30)
    back_ms = (time.perf_counter() - started) * 1000
    try:
        await aiormq.connect(url_with_token(url, token))
    except aiormq.exceptions.AMQPConnectionError:
        pass
    else:  # pragma: no cover - a failure of the design, not of the bench
        raise AssertionError("a token minted before the revocation still opens a connection")
    return revoked_ms, closed_ms, back_ms


async def main(trials: int) -> None:
    with scratch_vhost("bench") as broker, tempfile.TemporaryDirectory() as folder:
        async with Bus(broker.url, connection_name="bench revocation") as platform:
            await declare_platform(platform)
            private, _public = SigningKey.generate().save(Path(folder))
            port = free_port()
            auth = AuthService(AuthSettings(private, vhost=broker.vhost, http_port=port),
                               retry_s=0.2)  # fmt: skip
            await auth.start(platform)
            await wait_until(lambda: auth.leadership.leading, 30, "the auth service to lead")
            auth_url = f"http://127.0.0.1:{port}"
            admin = await RpcClient(platform, Owner.platform()).start()
            other = await _issue(admin, "bystander")
            token = await fetch_broker_token(other.api_key, auth_url)
            bystander = await Bus(url_with_token(broker.url, token)).connect()
            samples: tuple[list[float], list[float], list[float]] = ([], [], [])
            try:
                for _ in range(trials):
                    measured = await _trial(broker.url, broker.vhost, auth, admin, auth_url,
                                            bystander)  # fmt: skip
                    for values, value in zip(samples, measured, strict=True):
                        values.append(value)
            finally:
                await bystander.close()
                await admin.stop()
                await auth.stop(1.0)
    for name, values in zip(("revoke", "swapped_closed", "bystander_back"), samples, strict=True):
        print("\n".join(summary(name, values)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    asyncio.run(main(parser.parse_args().trials))
