"""Clients' credentials: an API key traded for short-lived broker tokens, kept fresh.

A client of the platform (the CLI, the SDK's clients and workers, an agent) holds an API
key, from ``--api-key``, ``IDLECLOUD_API_KEY`` or a file named by
``IDLECLOUD_API_KEY_FILE``. It asks the auth service's token endpoint
(``IDLECLOUD_AUTH_URL``, default ``http://127.0.0.1:8470``) for a broker token and
connects with it: the token is the AMQP password, and the broker names the connection's
user after the token's holder (:class:`bus.trust.Principal`); the connection's name
(``key:<key id> <purpose>``) is for people reading the broker's connection list. Revoking
the key closes it (:mod:`services.auth.keyring`). :class:`KeyRefresher` fetches a
new token at half its lifetime and swaps it into the open connection (AMQP
``update-secret``); the same token is presented on every reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bus import addresses
from bus.connection import TRANSIENT_ERRORS, Bus
from bus.defaults import AUTH_URL
from bus.errors import AuthUnavailable, CredentialsRefused
from bus.service import supervised

__all__ = [
    "BrokerToken",
    "KeyRefresher",
    "api_key_from_env",
    "fetch_broker_token",
    "key_holder",
    "url_with_token",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerToken:
    """A broker token and what the auth service said about it."""

    access_token: str
    expires_at: float
    key_id: str
    role: str
    subject: str

    def connection_name(self, purpose: str) -> str:
        """The name the connection goes by in the broker's connection list."""
        return f"key:{self.key_id} {purpose}"


def api_key_from_env() -> str | None:
    """The API key in ``IDLECLOUD_API_KEY``, or in the file ``IDLECLOUD_API_KEY_FILE``.

    Raises:
        CredentialsRefused: the file cannot be read.
    """
    if key := os.environ.get("IDLECLOUD_API_KEY", "").strip():
        return key
    if path := os.environ.get("IDLECLOUD_API_KEY_FILE"):
        try:
            return Path(path).read_text().strip() or None
        except OSError as error:
            raise CredentialsRefused(f"cannot read the API key file {path}: {error}") from None
    return None


async def fetch_broker_token(
    api_key: str, auth_url: str = AUTH_URL, ca_file: Path | None = None
) -> BrokerToken:
    """Trade ``api_key`` for a broker token at the token endpoint. Over ``https://`` the
    auth service must present a certificate of ``ca_file`` (default:
    ``IDLECLOUD_CA_FILE``; without either, the system's CAs).

    Raises:
        CredentialsRefused: the key was refused (revoked, expired, forged) or the auth
            service cannot be reached; the message says which.
    """
    # here: a replica never trades a key, and these imports would cost it 110 ms of CPU
    import aiohttp

    from bus.tls import https_context

    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.post(
                f"{auth_url.rstrip('/')}/v1/token",
                headers=headers,
                ssl=https_context(ca_file),
            ) as answer,  # fmt: skip
        ):
            body = await answer.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise AuthUnavailable(
            f"the auth service at {auth_url} cannot be reached ({error}); is it running? "
            "(set IDLECLOUD_AUTH_URL)"
        ) from None
    if answer.status != 200 or "access_token" not in body:
        raise CredentialsRefused(f"the auth service refused the API key: {body.get('error')}")
    return BrokerToken(
        body["access_token"], time.time() + float(body["expires_in"]), body["key_id"],
        body["role"], body["subject"],
    )  # fmt: skip


def url_with_token(url: str, token: BrokerToken) -> str:
    """``url`` (every node of it) with the key id as user and the broker token as password."""
    return addresses.each(
        url, lambda node: node.with_user(token.key_id).with_password(token.access_token)
    )


class KeyRefresher:
    """Keeps a connection's broker token fresh; see the module's header."""

    name = "key-refresher"

    def __init__(self, api_key: str, token: BrokerToken, auth_url: str = AUTH_URL) -> None:
        self.api_key = api_key
        self.token = token
        self.auth_url = auth_url
        self._task: asyncio.Task[None] | None = None

    async def start(self, bus: Bus) -> None:
        """Start refreshing in the background."""
        self._task = asyncio.get_running_loop().create_task(
            supervised("broker token refresher", lambda: self._refresh(bus))
        )

    async def stop(self, _grace_s: float) -> None:
        """Stop refreshing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _refresh(self, bus: Bus) -> None:
        while True:
            await asyncio.sleep(max(1.0, (self.token.expires_at - time.time()) / 2))
            try:
                self.token = await fetch_broker_token(self.api_key, self.auth_url)
                await bus.update_secret(self.token.access_token)
            except CredentialsRefused as error:
                log.error("cannot refresh the broker token: %s", error)
            except TRANSIENT_ERRORS:
                bus.use_secret_on_reconnect(self.token.access_token)


async def key_holder(
    url: str, purpose: str, auth_url: str | None = None
) -> tuple[str, str, KeyRefresher | None]:
    """Where and as whom to connect: with the configured API key, if any.

    Returns the URL to connect to, the connection's name and, with a key, the refresher
    that keeps its token fresh (run it as a service, or start it on the bus).

    Raises:
        CredentialsRefused: the key was refused or the auth service cannot be reached.
    """
    api_key = api_key_from_env()
    if api_key is None:
        return url, purpose, None
    auth_url = auth_url or os.environ.get("IDLECLOUD_AUTH_URL", AUTH_URL)
    token = await fetch_broker_token(api_key, auth_url)
    refresher = KeyRefresher(api_key, token, auth_url)
    return url_with_token(url, token), token.connection_name(purpose), refresher
