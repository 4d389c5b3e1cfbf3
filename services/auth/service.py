"""The auth service: issues and revokes API keys, and trades them for broker tokens.

Every instance follows the journal, so it knows every issued and revoked key. The leader
answers admins' requests over the bus:

* ``TokenIssue``: a new API key, recorded as ``KeyIssued`` without its secret. A user's
  key with limits also sets the namespace's quota through the journal, so quotas keep one
  source of truth.
* ``TokenRevoke``: recorded; then the key's broker key is removed from the broker
  (:mod:`services.auth.keyring`), so no token minted for it, before or after, opens a
  connection or passes an ``update-secret``, and in the same step every token holder's
  connection to the vhost is closed but the requesting admin's own. All of them, because
  on RabbitMQ 3.10 a connection may have swapped in the key's token with
  ``update-secret`` under another user name, and nothing shows which did. The others
  reconnect at once with tokens of their own keys.
* ``KeysQuery``: every key, revoked ones included.
* ``ReplicaTokenRequest`` (from the placement service): replicas' broker tokens, up to
  :data:`~schemas.REPLICA_TOKENS_MAX` at once, each for its namespace's task and result
  traffic only.

The leader also runs the token endpoint over HTTP. ``POST /v1/token`` with
``Authorization: Bearer <API key>`` returns a broker token with the key's scopes for at
most :data:`~services.auth.tokens.MAX_BROKER_TOKEN_S`, once the broker trusts the key's
broker key and the holder's door (:func:`bus.names.door`) exists; ``GET /v1/whoami`` says
what the key is. A revoked, expired or forged key gets 401 with the reason as JSON.

The leader trusts every live key's broker key when it takes over and again whenever its
connection comes back (a restarted broker forgets them), and forgets every revoked one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from bus import names
from bus.apikeys import ApiKey, InvalidKey, bearer_credential, read_api_key
from bus.codec import Delivery
from bus.defaults import AUTH_PORT, HOST, RESOURCE_SERVER_ID
from bus.rpc import RpcServer
from bus.tls import TlsFiles
from bus.topology import QueueSpec, declare_door, declare_namespace
from bus.trust import Principal
from schemas import (
    KeyIssued,
    KeyReply,
    KeysQuery,
    KeysReply,
    KeyView,
    Owner,
    QuotaSet,
    ReplicaRef,
    ReplicaToken,
    ReplicaTokenReply,
    ReplicaTokenRequest,
    RequestResult,
    TokenIssue,
    TokenRevoke,
)
from services.auth.keyring import Keyring, KeyringError
from services.auth.tokens import (
    MAX_BROKER_TOKEN_S,
    REPLICAS,
    SigningKey,
    broker_token,
    mint_api_key,
)
from services.base import ControlService
from services.http import serve
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
    http_host: str = HOST
    http_port: int = AUTH_PORT
    broker_token_s: int = MAX_BROKER_TOKEN_S
    broker_ctl: tuple[str, ...] = ("rabbitmqctl",)
    #: Serve HTTPS with this certificate (None: plain HTTP, for loopback only).
    tls: TlsFiles | None = None


def settings_from(env: ServiceEnv) -> AuthSettings:
    """The auth service's settings from the environment's.

    Raises:
        ValueError: no signing key file was named (the message says how to make one), or
            only half of the TLS pair.
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
        broker_ctl=tuple(env.broker_ctl.split()),
        tls=env.tls(),
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
                *((names.REQUESTS_EXCHANGE, key) for key in names.auth_request_keys()),
            ),
            (TokenIssue, TokenRevoke, KeysQuery, ReplicaTokenRequest),
            self._handle,
            prefetch=1,
        )
        self._http: web.AppRunner | None = None
        self.keyring = Keyring(settings.broker_ctl)
        self._keys_lock = asyncio.Lock()
        #: Key ids whose broker keys the broker trusts, as far as this leader knows (keys
        #: minted offline, ``bus token issue --key-file``, are not in the journal).
        self._trusted: set[str] = set()
        self._doors: set[Owner] = set()

    def leader_queues(self) -> tuple[QueueSpec, ...]:
        return (self._server.spec,)

    async def lead(self, epoch: int) -> None:
        await self._trust_live_keys()
        self.while_leading("keyring", self._keep_keys)
        await self._server.start(self.bus)
        app = web.Application()
        app.router.add_post("/v1/token", self._token)
        app.router.add_get("/v1/whoami", self._whoami)
        settings = self.settings
        self._http = await serve(app, settings.http_host, settings.http_port, settings.tls)

    async def step_down(self) -> None:
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        await self._server.stop(5.0)

    async def _handle(self, request: Request, delivery: Delivery) -> Reply:
        match request:
            case TokenIssue():
                return await self._issue(request)
            case TokenRevoke():
                await self.journal.append_and_read(request)
                async with self._keys_lock:
                    kid = self.key.broker_key(request.key_id).kid
                    spare = _requester(delivery, request.key_id)
                    closed = await self.keyring.revoke(kid, self.settings.vhost, spare)
                    self._trusted.discard(request.key_id)
                reason = (f"revoked; its broker key is gone and {closed} token connections "
                          "were closed (the others reconnect with their own tokens)")  # fmt: skip
                return RequestResult(request_id=request.request_id, accepted=True, reason=reason)
            case KeysQuery():
                keys = [k.model_copy(update={"revoked": k.key_id in self.state.revoked})
                        for k in self.state.keys.values()]  # fmt: skip
                return KeysReply(keys=tuple(keys))
            case ReplicaTokenRequest():
                return ReplicaTokenReply(tokens=tuple(map(self._replica_token, request.replicas)))

    def _replica_token(self, replica: ReplicaRef) -> ReplicaToken:
        token, expires_at = broker_token(
            self.key, self.settings.resource_server_id, "replica", replica.namespace,
            self.settings.vhost, key_id=replica.replica_id, app=replica.app,
            ttl_s=self.settings.broker_token_s,
        )  # fmt: skip
        until = datetime.fromtimestamp(expires_at, UTC)
        return ReplicaToken(replica_id=replica.replica_id, token=token, expires_at=until)

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
            await self._admit(api_key)
        except InvalidKey as error:
            return web.json_response({"error": str(error)}, status=401)
        except KeyringError as error:
            return web.json_response({"error": f"the broker is not ready: {error}"}, status=503)
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

    async def _admit(self, api_key: ApiKey) -> None:
        """Make the broker trust the key's broker key and give its holder a door.

        Raises:
            InvalidKey: the key was revoked meanwhile (checked again under the lock).
            KeyringError: the broker's keys could not be changed.
        """
        async with self._keys_lock:
            if api_key.key_id in self.state.revoked:
                raise InvalidKey("the API key was revoked")
            broker_key = self.key.broker_key(api_key.key_id)
            if api_key.key_id not in self._trusted:
                await self.keyring.change(trust=[broker_key])
                self._trusted.add(api_key.key_id)
        owner = {"user": Owner.namespace, "node": Owner.node}.get(api_key.role)
        if owner is not None and owner(api_key.subject) not in self._doors:
            channel = await self.bus.channel()
            if api_key.role == "user":
                await declare_namespace(channel, api_key.subject)
            else:
                await declare_door(channel, owner(api_key.subject))
            await channel.close()
            self._doors.add(owner(api_key.subject))

    async def _trust_live_keys(self) -> None:
        """Trust every live key's broker key (the journal's, those trusted before, and the
        replicas'); forget every revoked one's."""
        now = time.time()
        async with self._keys_lock:
            live = {REPLICAS, *self._trusted} | {
                view.key_id
                for view in self.state.keys.values()
                if view.expires_at.timestamp() > now
            }
            live -= set(self.state.revoked)
            trust = [self.key.broker_key(key_id) for key_id in sorted(live)]
            forget = [self.key.broker_key(key_id).kid for key_id in sorted(self.state.revoked)]
            await self.keyring.change(trust=trust, forget=forget)
            self._trusted = live

    async def _keep_keys(self) -> None:
        """After the connection comes back (the broker may have restarted and forgotten
        every key), trust the live keys again."""
        synced = self.bus.reconnects
        while True:
            await asyncio.sleep(1.0)
            if self.bus.reconnects != synced:
                synced = self.bus.reconnects
                await self._trust_live_keys()


def _requester(delivery: Delivery, revoked: str) -> str:
    """The requesting admin's user name, whose connections a revocation spares so the
    answer reaches it (unless it revokes its own key). An admin may issue any key, so its
    own connections gain nothing from holding another's token."""
    sender = Principal.from_user_id(delivery.user_id)
    if sender is None or sender.role != "admin" or sender.key == revoked:
        return ""
    return sender.user_name


def key_view(api_key: ApiKey) -> KeyView:
    """What the platform remembers of a key."""
    return KeyView(
        key_id=api_key.key_id, role=api_key.role, subject=api_key.subject, name=api_key.name,
        expires_at=datetime.fromtimestamp(api_key.expires_at, UTC),
    )  # fmt: skip
