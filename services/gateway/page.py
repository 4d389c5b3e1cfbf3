"""The web page: log in with an API key, deploy, watch the apps, the quota and the PCs.

Plain HTML, CSS and one script (``static/``), no build step. The page talks to the same
REST API as everyone else and stays live through its server-sent event streams.

Its credential is the API key itself, kept in an HttpOnly, SameSite=Strict cookie: the
page's script cannot read it and other sites cannot make the browser send it. A request
authenticated by the cookie that changes something must also carry the
``X-Idlecloud-Page`` header, which another site cannot add without a CORS preflight the
gateway never grants. Every answer carries a strict Content-Security-Policy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from bus.apikeys import InvalidKey, bearer_credential
from services.gateway.auth import Caller
from services.gateway.bodies import json_error, json_object
from services.gateway.models import LoggedOut, Session
from services.gateway.routes import public_operations

__all__ = [
    "CALLER",
    "PAGE_HEADER",
    "SECURITY_HEADERS",
    "SESSION_COOKIE",
    "add_page_routes",
    "credential",
    "cross_site",
    "is_public",
    "log_in",
    "log_out",
    "who",
]

SESSION_COOKIE = "idlecloud_session"
PAGE_HEADER = "X-Idlecloud-Page"
#: The authenticated caller, set on every request by the gateway's middleware.
CALLER = web.RequestKey("caller", Caller)
STATIC = Path(__file__).with_name("static")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PUBLIC = public_operations()


def is_public(request: web.Request) -> bool:
    """Whether ``request`` needs no credential: the page itself and its files, and the
    route table's public operations (the API's description, logging in and out)."""
    if request.path == "/" or request.path.startswith("/static/"):
        return True
    resource = request.match_info.route.resource
    return resource is not None and (request.method, resource.canonical) in _PUBLIC


def credential(request: web.Request) -> str:
    """The API key or broker token a request carries: its bearer header, else the page's
    cookie.

    Raises:
        InvalidKey: neither is there.
    """
    header = request.headers.get("Authorization")
    if header is not None:
        return bearer_credential(header, "an API key")
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return cookie
    raise InvalidKey("send an API key as `Authorization: Bearer <key>`, or log in at /")


def cross_site(request: web.Request) -> bool:
    """True for a change authenticated only by the cookie and lacking the page's header:
    what a forged cross-site request looks like."""
    return (
        request.method not in _SAFE_METHODS
        and "Authorization" not in request.headers
        and request.headers.get(PAGE_HEADER) != "1"
    )


def _session(caller: Caller) -> web.Response:
    return web.json_response(
        Session(role=caller.role, subject=caller.subject, key_id=caller.key_id).model_dump()
    )


async def log_in(request: web.Request, login: Callable[[str], Caller]) -> web.Response:
    """``POST /v1/session``: check the body's ``api_key`` with ``login`` and set the cookie."""
    body = await json_object(request)
    key = body.get("api_key") if isinstance(body, dict) else None
    if not isinstance(key, str) or not key.strip():
        return json_error(422, "paste your API key")
    try:
        caller = login(key.strip())
    except InvalidKey as refused:
        return json_error(401, str(refused))
    if caller.role not in ("user", "admin"):
        return json_error(403, f"a {caller.role}'s key cannot log in; use a user's or admin's key")
    response = _session(caller)
    response.set_cookie(SESSION_COOKIE, key.strip(), httponly=True, samesite="Strict",
                        secure=request.secure, path="/")  # fmt: skip
    return response


def who(request: web.Request) -> web.Response:
    """``GET /v1/session``: who the request's key or cookie is."""
    return _session(request[CALLER])


def log_out() -> web.Response:
    """``DELETE /v1/session``: clear the cookie."""
    response = web.json_response(LoggedOut(logged_out=True).model_dump())
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def add_page_routes(app: web.Application) -> None:
    """Serve the page and its files on ``app`` (its session routes are in the route table)."""

    async def index(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
