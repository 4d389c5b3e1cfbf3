"""The gateway: a REST API over the bus for people who prefer HTTP to AMQP.

Every request is authenticated (an API key as a bearer header, checked
with the auth service's public key; revoked keys are known from the journal), allowed
only for the caller's own namespace (admins: every one), and turned into the very bus
messages the CLI sends: deploys, scales and deletes go to the quota manager, questions
to the placement leader, each on a broker connection of the caller's own, opened with the
caller's broker token (:mod:`services.gateway.relay`): the broker names the caller as the
sender, so the gateway adds no power of its own. The gateway never decides anything. Errors are JSON
(``{"error": "..."}``): 401 for a missing or bad credential, 403 for another namespace,
404 for an unknown app, 409 for a refusal (the quota's numbers in the message), 422 for
an invalid body (one message per field), 503 when the control plane does not answer.
``GET /v1/namespaces/{ns}/events`` streams the namespace's events (server-sent events).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from aiohttp import web
from pydantic import ValidationError

from bus import names
from bus.apikeys import InvalidKey
from bus.connection import Bus
from bus.defaults import AUTH_URL, GATEWAY_PORT, HOST
from bus.errors import AuthUnavailable, BusError, CredentialsRefused, DoorClosed
from bus.journal import Journal
from bus.pages import every_app, every_node
from bus.rpc import RpcClient
from bus.tls import TlsFiles
from schemas import (
    AppsReply,
    CordonRequest,
    DeleteRequest,
    DeployRequest,
    Message,
    Owner,
    RequestResult,
    ScaleRequest,
    TokenRevoke,
)
from schemas.base import DNS_LABEL_PATTERN
from schemas.journal import Entry
from services.gateway.auth import Caller, identify
from services.gateway.bodies import invalid_body, json_error, json_object
from services.gateway.jobs import JobRoutes
from services.gateway.logs import LogRoutes
from services.gateway.models import Accepted, Quota
from services.gateway.openapi import openapi
from services.gateway.page import (
    CALLER,
    PAGE_HEADER,
    SECURITY_HEADERS,
    add_page_routes,
    credential,
    cross_site,
    is_public,
    log_in,
    log_out,
    who,
)
from services.gateway.relay import Relays
from services.gateway.routes import ROUTES, server_path
from services.gateway.stream import stream_events
from services.gateway.usage import AccountRoutes
from services.http import serve
from services.state import DesiredState

__all__ = ["Gateway", "GatewaySettings"]

log = logging.getLogger(__name__)

_LABEL = re.compile(DNS_LABEL_PATTERN)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
R = TypeVar("R", bound=Message)
#: The caller's API key, which its relay trades for the caller's own broker token.
CREDENTIAL = web.RequestKey("credential", str)


@dataclass(frozen=True)
class GatewaySettings:
    """The auth service's public key, and where to listen."""

    public_key_file: Path
    http_host: str = HOST
    http_port: int = GATEWAY_PORT
    #: Serve HTTPS with this certificate (None: plain HTTP, for loopback only).
    tls: TlsFiles | None = None
    #: Where callers' API keys are traded for their broker tokens (:mod:`.relay`).
    auth_url: str = AUTH_URL


class Gateway(JobRoutes, LogRoutes, AccountRoutes):
    """The REST API; see the module's header."""

    name = "gateway"

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._public = settings.public_key_file.read_bytes()
        self.state = DesiredState()
        self._journal = Journal(self._apply)
        self._bus: Bus | None = None
        self._relays: Relays | None = None
        self._nodes_client: RpcClient | None = None
        self._http: web.AppRunner | None = None
        self._streams: set[asyncio.Task[object]] = set()

    async def start(self, bus: Bus) -> None:
        """Follow the journal (for revocations) and serve HTTP."""
        self._bus = bus
        ca_file = None if self.settings.tls is None else self.settings.tls.ca_file
        self._relays = Relays(bus.url, self.settings.auth_url, ca_file)
        self._nodes_client = await RpcClient(bus, Owner.platform()).start()
        await self._journal.start(bus)
        await self._journal.catch_up()
        app = web.Application(middlewares=[self._authenticate])
        app.on_response_prepare.append(_secure)
        add_page_routes(app)
        for op in ROUTES:
            app.router.add_route(op.method, server_path(op.path), getattr(self, op.handler))
        settings = self.settings
        self._http = await serve(app, settings.http_host, settings.http_port, settings.tls)

    async def stop(self, _grace_s: float) -> None:
        """Stop serving: end the event streams, let other requests finish."""
        for stream in list(self._streams):
            stream.cancel()
        if self._http is not None:
            await self._http.cleanup()
        if self._relays is not None:
            await self._relays.close()
        if self._nodes_client is not None:
            await self._nodes_client.stop()

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_public(request):
            return await _json_errors(handler, request)
        try:
            key = credential(request)
            caller = self._identify(key)
        except InvalidKey as error:
            return json_error(401, str(error))
        if cross_site(request):
            return json_error(403, f"a change made from the page must carry {PAGE_HEADER}: 1")
        for part in ("namespace", "app", "node"):
            value = request.match_info.get(part)
            if value is not None and not _LABEL.fullmatch(value):
                return json_error(404, f"no {part} is named {value[:64]!r}: names are DNS labels "
                                   "(lower-case letters, digits and dashes)")  # fmt: skip
        namespace = request.match_info.get("namespace")
        if namespace is not None and not caller.may_act_for(namespace):
            return json_error(403, f"{caller.role} {caller.subject} may not act for {namespace}")
        request[CALLER] = caller
        request[CREDENTIAL] = key
        try:
            return await _json_errors(handler, request)
        except AuthUnavailable as error:
            return json_error(503, f"the auth service did not answer: {error}")
        except CredentialsRefused as error:
            return json_error(401, str(error))
        except DoorClosed:
            return json_error(404, f"no namespace is named {namespace!r} (it has no quota)")
        except BusError as error:
            return json_error(503, f"the control plane did not answer: {error}")

    def _identify(self, credential: str) -> Caller:
        """Who an API key (a request's, or one pasted into the login form) is.

        Raises:
            InvalidKey: a bad or revoked credential.
        """
        return identify(credential, self._public, self.state.revoked)

    def _apply(self, entry: Entry) -> None:
        """Follow the journal; a revoked key's relay is closed at once."""
        self.state.apply(entry)
        if isinstance(entry.message, TokenRevoke) and self._relays is not None:
            task = asyncio.get_running_loop().create_task(self._relays.drop(entry.message.key_id))
            self._streams.add(task)
            task.add_done_callback(self._streams.discard)

    async def _ask(self, request: web.Request, message: Message, expect: type[R]) -> R:
        """Send ``message`` by RPC on the caller's own connection (:mod:`.relay`)."""
        assert self._relays is not None
        caller: Caller = request[CALLER]
        return await self._relays.call(
            caller.key_id, request[CREDENTIAL], message, expect, timeout_s=15.0
        )

    async def _connection(self, request: web.Request) -> Bus:
        """The caller's own broker connection (:mod:`.relay`)."""
        assert self._relays is not None
        return await self._relays.connection(request[CALLER].key_id, request[CREDENTIAL])

    async def _submit(
        self, request: web.Request, message: Message, created: bool = False
    ) -> web.Response:
        result = await self._ask(request, message, RequestResult)
        if not result.accepted:
            unknown = isinstance(message, ScaleRequest | DeleteRequest) and (
                (message.namespace, message.app) not in self.state.deployments
            )
            return json_error(404 if unknown else 409, result.reason)
        answer = Accepted(accepted=True, request_id=result.request_id)
        return web.json_response(answer.model_dump(), status=201 if created else 200)

    async def _apps(
        self, request: web.Request, namespace: str, app: str | None = None
    ) -> AppsReply:
        return await every_app(lambda page: self._ask(request, page, AppsReply), namespace, app)

    async def _openapi(self, _request: web.Request) -> web.Response:
        return web.json_response(openapi())

    async def _log_in(self, request: web.Request) -> web.Response:
        return await log_in(request, self._identify)

    async def _who(self, request: web.Request) -> web.Response:
        return who(request)

    async def _log_out(self, _request: web.Request) -> web.Response:
        return log_out()

    async def _list(self, request: web.Request) -> web.Response:
        reply = await self._apps(request, request.match_info["namespace"])
        return web.json_response([view.model_dump(mode="json") for view in reply.apps])

    async def _show(self, request: web.Request) -> web.Response:
        namespace, app = request.match_info["namespace"], request.match_info["app"]
        reply = await self._apps(request, namespace, app)
        if not reply.apps:
            return json_error(404, f"{namespace} has no app {app!r}")
        return web.json_response(reply.apps[0].model_dump(mode="json"))

    async def _deploy(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        if isinstance(body, web.Response):
            return body
        for key in ("command", "ports"):
            if isinstance(body.get(key), list):
                body[key] = tuple(body[key])
        try:
            deploy = DeployRequest(request_id=uuid.uuid4().hex[:16],
                                   namespace=request.match_info["namespace"], **body)  # fmt: skip
        except (ValidationError, TypeError) as error:
            return invalid_body(error)
        return await self._submit(request, deploy, created=True)

    async def _scale(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        if isinstance(body, web.Response):
            return body
        try:
            scale = ScaleRequest(request_id=uuid.uuid4().hex[:16], app=request.match_info["app"],
                                 namespace=request.match_info["namespace"],
                                 replicas=body.get("replicas", -1))  # fmt: skip
        except ValidationError as error:
            return invalid_body(error)
        return await self._submit(request, scale)

    async def _delete(self, request: web.Request) -> web.Response:
        try:
            delete = DeleteRequest(request_id=uuid.uuid4().hex[:16], app=request.match_info["app"],
                                   namespace=request.match_info["namespace"])  # fmt: skip
        except ValidationError as error:
            return invalid_body(error)
        return await self._submit(request, delete)

    async def _quota(self, request: web.Request) -> web.Response:
        reply = await self._apps(request, request.match_info["namespace"])
        quota = Quota(namespace=reply.namespace, quota=reply.quota, reserved=reply.reserved,
                      running=reply.running)  # fmt: skip
        return web.json_response(quota.model_dump(mode="json"))

    async def _nodes(self, _request: web.Request) -> web.Response:
        """What anyone may see of the PCs: asked on the gateway's own connection, the one
        question it asks for itself (a user's key may not ask it)."""
        assert self._nodes_client is not None
        reply = await every_node(self._nodes_client)
        return web.json_response([view.model_dump(mode="json") for view in reply.nodes])

    async def _cordon(self, request: web.Request) -> web.Response:
        if request[CALLER].role != "admin":
            return json_error(403, "only an admin cordons, drains or uncordons a PC")
        action = request.match_info["action"]
        if action not in ("cordon", "uncordon", "drain"):
            return json_error(404, f"no action {action[:64]!r}; use cordon, uncordon or drain")
        typed: Literal["cordon", "uncordon", "drain"] = action  # type: ignore[assignment]
        try:
            cordon = CordonRequest(request_id=uuid.uuid4().hex[:16],
                                   node=request.match_info["node"], action=typed)  # fmt: skip
        except ValidationError as error:
            return invalid_body(error)
        return await self._submit(request, cordon)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """The namespace's events as server-sent events, until the client goes away."""
        return await self._stream(
            request, (names.ns_events_binding(request.match_info["namespace"]),)
        )

    async def _node_events(self, request: web.Request) -> web.StreamResponse:
        """PCs' presence and cordons as server-sent events (what anyone may see of them)."""
        return await self._stream(request, names.node_view_keys())

    async def _stream(self, request: web.Request, keys: tuple[str, ...]) -> web.StreamResponse:
        """An event stream, ended by the gateway's stop (streams never finish by themselves)."""
        assert self._bus is not None
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            return await stream_events(request, self._bus, keys)
        finally:
            self._streams.discard(task)


async def _secure(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


async def _json_errors(handler: Handler, request: web.Request) -> web.StreamResponse:
    """The handler's answer; aiohttp's own errors (no such route, a method the route does
    not take) answered as JSON like every other error."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return json_error(error.status, f"{error.reason}: {request.method} {request.path}")
