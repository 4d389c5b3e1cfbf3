"""The gateway's HTTP conventions, shared by the API and the page: JSON bodies in, errors
out as ``{"error": "..."}``."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from schemas.base import MAX_STRING_LENGTH
from services.gateway.models import ApiError

__all__ = ["json_error", "json_object"]


def json_error(status: int, message: str, fields: dict[str, str] | None = None) -> web.Response:
    """An error answer (:class:`~.models.ApiError`): its status, a message that says what to
    do (at most ``MAX_STRING_LENGTH`` characters, as the document promises, whatever it
    quotes) and, for an invalid body, each field's complaint."""
    answer = ApiError(error=message[:MAX_STRING_LENGTH], fields=fields)
    return web.json_response(answer.model_dump(exclude_none=True), status=status)


async def json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's body as a JSON object, or the 422 that says why it is not one."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return json_error(422, "the body is not JSON")
    if not isinstance(body, dict):
        return json_error(422, "the body must be a JSON object")
    return body
