"""The gateway's HTTP conventions, shared by the API and the page: JSON bodies in, errors
out as ``{"error": "..."}``."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from schemas.base import MAX_STRING_LENGTH

__all__ = ["json_error", "json_object"]


def json_error(status: int, message: str) -> web.Response:
    """An error answer: its status, and a message that says what to do (at most
    ``MAX_STRING_LENGTH`` characters, as the document promises, whatever it quotes)."""
    return web.json_response({"error": message[:MAX_STRING_LENGTH]}, status=status)


async def json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's body as a JSON object, or the 422 that says why it is not one."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return json_error(422, "the body is not JSON")
    if not isinstance(body, dict):
        return json_error(422, "the body must be a JSON object")
    return body
