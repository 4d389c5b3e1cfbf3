"""The gateway's HTTP conventions, shared by the API and the page: JSON bodies in, errors
out as ``{"error": "..."}``."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from bus.logs import parse_span
from schemas import utc_now
from schemas.base import MAX_STRING_LENGTH
from services.gateway.models import ApiError

__all__ = ["MAX_SINCE", "invalid_body", "json_error", "json_object", "since_param"]

#: The furthest back a ``since`` parameter may reach: the platform keeps nothing older,
#: and an event time (a ``Timestamp``) cannot say it.
MAX_SINCE = timedelta(days=3650)
#: How much of one invalid field an answer shows (its path and complaint), and how many.
_FIELD_SHOWN = 200
_FIELDS_SHOWN = 10


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


def invalid_body(error: ValidationError | TypeError) -> web.Response:
    """422 with each field's complaint. A field's path names what the caller sent (a key
    of its own choosing, too), so each is cut to :data:`_FIELD_SHOWN` characters and the
    whole answer stays within the documented bounds however large the body was."""
    if isinstance(error, TypeError):
        return json_error(422, str(error)[:_FIELD_SHOWN])
    fields: dict[str, str] = {}
    for problem in error.errors(include_url=False, include_input=False)[:_FIELDS_SHOWN]:
        where = ".".join(map(str, problem["loc"])) or "body"
        if len(where) > _FIELD_SHOWN:
            where = where[: _FIELD_SHOWN - 1] + "…"
        fields[where] = problem["msg"][:_FIELD_SHOWN]
    message = "; ".join(f"{field}: {msg}" for field, msg in fields.items())
    return json_error(422, f"invalid: {message}", fields)


def since_param(request: web.Request, default: str) -> datetime | web.Response:
    """The moment the ``since`` query parameter names (``default`` when absent), or the
    422 that says why it names none."""
    text = request.query.get("since", default)
    try:
        span = parse_span(text)
    except ValueError as error:
        return json_error(422, f"since: {error}")
    if span > MAX_SINCE:
        return json_error(422, f"since={text[:32]!r}: at most {MAX_SINCE.days}d (ten years)")
    return utc_now() - span
