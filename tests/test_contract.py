"""The container contract: a worker needs only IDLECLOUD_* variables and a token file.

Token renewal is exercised for real: an internal broker user whose password is rotated
stands in for short-lived OAuth 2 tokens (the auth service's tests do it with JWTs), so a
reconnect presenting a stale secret would be refused.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import jwt
import pytest

from bus.connection import Bus, broker_user_name, unverified_claims
from bus.sdk import TaskClient
from bus.sdk.contract import TokenFile, broker_url_with_token, token_expiry
from idlecloud.dev.services import BrokerInfo, management, rabbitmqctl
from schemas import DeploymentState, DeploymentStatus, utc_now
from tests.programs.sdk_tasks import make_app

from .helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent


def test_a_jwt_is_re_read_at_half_its_remaining_life(tmp_path: Path) -> None:
    now = time.time()
    token = jwt.encode({"exp": int(now) + 600, "sub": "replica"}, "k" * 32, algorithm="HS256")
    path = tmp_path / "token"
    path.write_text(token + "\n")
    assert token_expiry(token) == int(now) + 600
    assert token_expiry("plain-password") is None
    assert unverified_claims(token) == {"exp": int(now) + 600, "sub": "replica"}
    assert broker_user_name(f"amqp://idlecloud:{token}@127.0.0.1/") == "replica"
    middles = [b"[1, 2]", b'{"exp"', b"\xff\xfe", b'{"exp": "soon"}']
    garbage = ["a.b.c", "a..c", "a.!!!.c"]
    garbage += [f"a.{base64.urlsafe_b64encode(m).decode()}.c" for m in middles]
    for token_like in garbage:  # read as no expiry, never raised
        assert token_expiry(token_like) is None, token_like
    assert broker_user_name("amqp://someone:a.b.c@127.0.0.1/") == "someone"
    watcher = TokenFile(str(path), check_s=3600)
    assert watcher.next_check_s(now) == pytest.approx(300, abs=1)
    assert watcher.next_check_s(now + 599) == 1.0  # never busy-loops on an expiring token
    assert TokenFile(str(path), check_s=30).next_check_s(now) == 30


def test_a_missing_or_empty_token_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the token file"):
        broker_url_with_token("amqp://u@127.0.0.1/", str(tmp_path / "absent"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        broker_url_with_token("amqp://u@127.0.0.1/", str(tmp_path / "empty"))


def _rotating_user(broker: BrokerInfo, password: str) -> str:
    user = f"replica-{uuid.uuid4().hex[:8]}"
    set_password(user, password)
    management(
        "PUT",
        f"permissions/{quote(broker.vhost, safe='')}/{user}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    return user


def set_password(user: str, password: str) -> None:
    management("PUT", f"users/{user}", {"password": password, "tags": ""})


async def _publish_works(bus: Bus) -> None:
    status = DeploymentStatus(
        namespace="tok", app="a", state=DeploymentState.PENDING, desired=1, running=0,
        at=utc_now(),
    )  # fmt: skip
    await bus.publish(status, timeout_s=20)


async def test_renewed_tokens_reach_the_open_connection_and_every_reconnect(
    broker: BrokerInfo, tmp_path: Path
) -> None:
    token_path = tmp_path / "token"
    token_path.write_text("first-secret")
    user = _rotating_user(broker, "first-secret")
    url = broker_url_with_token(broker.url.replace("guest:guest@", f"{user}@"), str(token_path))
    try:
        async with Bus(url, connection_name="token test") as bus:
            watcher = TokenFile(str(token_path), check_s=3600)
            await watcher.start(bus)

            # The platform rewrites the file: update-secret swaps it in, reconnects use it.
            set_password(user, "second-secret")
            token_path.write_text("second-secret\n")
            assert await watcher.refresh() is True
            assert await watcher.refresh() is False
            await asyncio.to_thread(rabbitmqctl, "close_all_connections", "-p", broker.vhost, "t")
            await wait_until(lambda: bus.reconnects >= 1, timeout_s=20, what="a reconnect")
            await _publish_works(bus)

            # Rewritten while nobody looked: the connection's loss re-reads the file.
            set_password(user, "third-secret")
            token_path.write_text("third-secret")
            await asyncio.to_thread(rabbitmqctl, "close_all_connections", "-p", broker.vhost, "t")
            await wait_until(lambda: bus.reconnects >= 2, timeout_s=20, what="a 2nd reconnect")
            await _publish_works(bus)
            assert watcher.current == "third-secret"
            await watcher.stop(0)
    finally:
        management("DELETE", f"users/{user}")


async def test_a_worker_runs_on_the_four_variables_alone(
    broker: BrokerInfo, bus: Bus, unique: str, tmp_path: Path
) -> None:
    token_path = tmp_path / "token"
    token_path.write_text("worker-secret")
    user = _rotating_user(broker, "worker-secret")
    app = make_app(f"t{unique}", "contract")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "IDLECLOUD_URL": broker.url.replace("guest:guest@", f"{user}@"),
        "IDLECLOUD_NAMESPACE": app.namespace,
        "IDLECLOUD_APP": app.app,
        "IDLECLOUD_TOKEN_FILE": str(token_path),
    }
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "idlecloud", "worker", "tests.programs.sdk_app:app", cwd=ROOT, env=env
    )
    try:
        async with TaskClient(bus, app) as client:
            assert await asyncio.wait_for(client.call(app.tasks["add"], 2, 3), 30) == 5
    finally:
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 30) == 0
        management("DELETE", f"users/{user}")
