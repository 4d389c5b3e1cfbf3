"""The auth service: issues and revokes API keys, and trades them for broker tokens.

Every instance follows the journal, so it knows every issued and revoked key. The leader
answers admins' requests over the bus:

* ``TokenIssue``: a new API key, recorded as ``KeyIssued`` without its secret. A user's
  key with limits also sets the namespace's quota through the journal, so quotas keep one
  source of truth.
* ``TokenRevoke``: recorded, then every broker connection of the key is closed through
  the management API. The sweep repeats every ``sweep_s`` for as long as a token minted
  before the revocation could still be valid.
* ``KeysQuery``: every key, revoked ones included.
* ``ReplicaTokenRequest`` (from the placement service): a replica's broker token, for its
  namespace's task and result traffic only.

The leader also runs the token endpoint over HTTP. ``POST /v1/token`` with
``Authorization: Bearer <API key>`` returns a broker token with the key's scopes for at
most :data:`~services.auth.tokens.MAX_BROKER_TOKEN_S`; ``GET /v1/whoami`` says what the key
is. A revoked, expired or forged key gets 401 with the reason as JSON.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from yarl import URL

from bus import names
from bus.codec import Delivery
from bus.devservices import RESOURCE_SERVER_ID
from bus.rpc import RpcServer
from bus.topology import QueueSpec
from schemas import (
    KeyIssued,
    KeyReply,
    KeysQuery,
    KeysReply,
    KeyView,
    QuotaSet,
    ReplicaTokenReply,
    ReplicaTokenRequest,
    RequestResult,
    TokenIssue,
    TokenRevoke,
)
from services.auth.tokens import (
    MAX_BROKER_TOKEN_S,
    ApiKey,
    InvalidKey,
    SigningKey,
    bearer_credential,
    broker_token,
    mint_api_key,
    read_api_key,
)
from services.base import ControlService
from services.settings import ServiceEnv

__all__ = ["AuthService", "AuthSettings", "key_view", "settings_from"]

log = logging.getLogger(__name__)

Request = TokenIssue | TokenRevoke | KeysQuery | ReplicaTokenRequest
Reply = KeyReply | RequestResult | KeysReply | ReplicaTokenReply


@dataclass(frozen=True)
class AuthSettings:
    """Where the signing key is, which vhost tokens are for, and where to listen."""

    key_file: Path
    vhost: str = "/"
    resource_server_id: str = RESOURCE_SERVER_ID
    http_host: str = "127.0.0.1"
    http_port: int = 8470
    management_url: str = "http://guest:guest@127.0.0.1:15672"
    broker_token_s: int = MAX_BROKER_TOKEN_S
    sweep_s: float = 2.0


def settings_from(env: ServiceEnv) -> AuthSettings:
    """The auth service's settings from the environment's.

    Raises:
        ValueError: no signing key file was named (the message says how to make one).
    """
    if env.auth_key_file is None:
        raise ValueError(
            "set IDLECLOUD_AUTH_KEY_FILE to the signing key (make one with `bus token init`)"
        )
    return AuthSettings(
        key_file=env.auth_key_file,
        vhost=env.vhost,
        http_host=env.auth_host,
        http_port=env.auth_port,
        management_url=env.management_url,
    )


class AuthService(ControlService):
    """API keys, broker tokens and revocation; see the module's header."""

    name = "auth"

    def __init__(self, settings: AuthSettings, *, retry_s: float = 0.5) -> None:
        super().__init__(retry_s=retry_s)
        self.settings = settings
        self.key = SigningKey.load(settings.key_file)
        self._public = self.key.public_pem
        self._server: RpcServer[Request] = RpcServer(
            QueueSpec.quorum(
                names.service_queue(self.name, "requests"),
                *((names.COMMANDS_EXCHANGE, key) for key in names.auth_request_keys()),
            ),
            (TokenIssue, TokenRevoke, KeysQuery, ReplicaTokenRequest),
            self._handle,
            prefetch=1,
        )
        self._http: web.AppRunner | None = None
        self._revoked_at: dict[str, float] = {}  # key id -> when this leader learned of it

    def leader_queues(self) -> tuple[QueueSpec, ...]:
        return (self._server.spec,)

    async def lead(self, epoch: int) -> None:
        await self._server.start(self.bus)
        app = web.Application()
        app.router.add_post("/v1/token", self._token)
        app.router.add_get("/v1/whoami", self._whoami)
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        site = web.TCPSite(self._http, self.settings.http_host, self.settings.http_port)
        await site.start()
        self.while_leading("sweeper", self._sweep)

    async def step_down(self) -> None:
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        await self._server.stop(5.0)

    async def _handle(self, request: Request, _delivery: Delivery) -> Reply:
        match request:
            case TokenIssue():
                return await self._issue(request)
            case TokenRevoke():
                await self.journal.append_and_read(request)
                self._revoked_at[request.key_id] = time.monotonic()
                closed = await self._close_connections(request.key_id)
                reason = f"revoked; {closed} open connections closed"
                return RequestResult(request_id=request.request_id, accepted=True, reason=reason)
            case KeysQuery():
                keys = [k.model_copy(update={"revoked": k.key_id in self.state.revoked})
                        for k in self.state.keys.values()]  # fmt: skip
                return KeysReply(keys=tuple(keys))
            case ReplicaTokenRequest():
                token, expires_at = broker_token(
                    self.key, self.settings.resource_server_id, "replica", request.namespace,
                    self.settings.vhost, key_id=request.replica_id, app=request.app,
                    ttl_s=self.settings.broker_token_s,
                )  # fmt: skip
                until = datetime.fromtimestamp(expires_at, UTC)
                return ReplicaTokenReply(
                    replica_id=request.replica_id, token=token, expires_at=until
                )

    async def _issue(self, request: TokenIssue) -> KeyReply:
        if request.limits is not None and request.role != "user":
            reason = "only a user's key has limits (its namespace's quota)"
            return KeyReply(request_id=request.request_id, accepted=False, reason=reason)
        limits = (
            (request.limits.cpu_millicores, request.limits.memory_mib) if request.limits else None
        )
        issued, api_key = mint_api_key(self.key, request.role, request.subject, name=request.name,
                                       ttl_s=request.ttl_s, limits=limits)  # fmt: skip
        view = key_view(issued)
        await self.journal.append_and_read(KeyIssued(request_id=request.request_id, key=view))
        if limits is not None:
            await self.journal.append_and_read(QuotaSet(
                request_id=f"{request.request_id[:50]}-quota", namespace=request.subject,
                cpu_millicores=limits[0], memory_mib=limits[1],
            ))  # fmt: skip
        return KeyReply(request_id=request.request_id, accepted=True, key=view, api_key=api_key)

    def _read_key(self, request: web.Request) -> ApiKey:
        token = bearer_credential(request.headers.get("Authorization", ""))
        api_key = read_api_key(token, self._public)
        if api_key.key_id in self.state.revoked:
            raise InvalidKey("the API key was revoked")
        return api_key

    async def _token(self, request: web.Request) -> web.Response:
        try:
            api_key = self._read_key(request)
        except InvalidKey as error:
            return web.json_response({"error": str(error)}, status=401)
        token, expires_at = broker_token(
            self.key, self.settings.resource_server_id, api_key.role, api_key.subject,
            self.settings.vhost, key_id=api_key.key_id, ttl_s=self.settings.broker_token_s,
        )  # fmt: skip
        return web.json_response({
            "access_token": token, "token_type": "bearer",
            "expires_in": expires_at - int(time.time()), "key_id": api_key.key_id,
            "role": api_key.role, "subject": api_key.subject, "vhost": self.settings.vhost,
        })  # fmt: skip

    async def _whoami(self, request: web.Request) -> web.Response:
        try:
            api_key = self._read_key(request)
        except InvalidKey as error:
            return web.json_response({"error": str(error)}, status=401)
        return web.json_response(key_view(api_key).model_dump(mode="json"))

    async def _sweep(self) -> None:
        """Close the connections of recently revoked keys, for as long as a token minted
        before the revocation could still be valid."""
        while True:
            await asyncio.sleep(self.settings.sweep_s)
            horizon = time.monotonic() - self.settings.broker_token_s
            for key_id, at in list(self._revoked_at.items()):
                if at < horizon:
                    del self._revoked_at[key_id]
                else:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        await self._close_connections(key_id)

    async def _close_connections(self, key_id: str) -> int:
        """Close every broker connection of ``key_id`` (its user, or named after it)."""
        url = URL(self.settings.management_url.rstrip("/"))
        basic = base64.b64encode(f"{url.user or ''}:{url.password or ''}".encode()).decode()
        root = str(url.with_user(None))
        listing = f"{root}/api/connections?columns=name,user,client_properties"
        closed = 0
        timeout = aiohttp.ClientTimeout(total=10)
        headers = {"Authorization": f"Basic {basic}"}
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
            async with http.get(listing) as got:
                got.raise_for_status()
                listed: list[dict[str, Any]] = await got.json()
            for connection in listed:
                named = str((connection.get("client_properties") or {}).get("connection_name", ""))
                if connection.get("user") == key_id or named.startswith(f"key:{key_id}"):
                    target = f"{root}/api/connections/{quote(connection['name'], safe='')}"
                    async with http.delete(target, headers={"X-Reason": "API key revoked"}):
                        closed += 1
        return closed


def key_view(api_key: ApiKey) -> KeyView:
    """What the platform remembers of a key."""
    return KeyView(
        key_id=api_key.key_id, role=api_key.role, subject=api_key.subject, name=api_key.name,
        expires_at=datetime.fromtimestamp(api_key.expires_at, UTC),
    )  # fmt: skip
