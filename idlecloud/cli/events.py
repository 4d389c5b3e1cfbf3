"""`bus events`: the platform's events as they happen, for people and scripts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from typing import Annotated

import typer
from aio_pika.abc import AbstractIncomingMessage

from bus import names
from bus.codec import decode_event
from bus.defaults import BROKER_URL
from bus.errors import InvalidMessage
from bus.topology import QueueSpec
from idlecloud.cli._common import (
    JsonOption,
    OptionalNamespaceOption,
    UrlOption,
    console,
    run_async,
)
from idlecloud.cli.session import connect
from schemas import Message, Owner

__all__ = ["register"]


_QUIET = ("NodeHeartbeat", "MetricSample")


def _summary(message: Message) -> str:
    fields = message.model_dump(mode="json", exclude={"replicas", "at", "sent_at"})
    return " ".join(f"{key}={value}" for key, value in fields.items() if value not in ("", None))


async def _follow(
    url: str, namespace: str | None, seconds: float | None, as_json: bool, noisy: bool
) -> None:
    """A namespace's events come from its own view (all its users may read); an admin's
    without a namespace from ``idlecloud.events`` itself."""
    owner = Owner.namespace(namespace) if namespace else Owner.platform()
    source = (
        (names.ns_events_exchange(namespace), "#") if namespace else (names.EVENTS_EXCHANGE, "#")
    )
    async with connect(url, "events") as bus:
        channel = await bus.channel()
        spec = QueueSpec.private(names.reply_queue(owner, f"events-{uuid.uuid4().hex[:8]}"), source)
        queue = await spec.declare(channel)
        async with queue.iterator(no_ack=True) as incoming, asyncio.timeout(seconds):
            async for delivery in incoming:
                _show(delivery, as_json, noisy)


def _show(delivery: AbstractIncomingMessage, as_json: bool, noisy: bool) -> None:
    try:
        message = decode_event(delivery)
    except InvalidMessage:
        return  # not what it claims to be (the platform's consumers dead-letter it)
    if message.schema_name in _QUIET and not noisy:
        return
    if as_json:  # one JSON object per line, as it arrives
        line = json.dumps({"schema": message.schema_name, **message.model_dump(mode="json")})
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    else:
        line = f"{delivery.routing_key} {message.schema_name} {_summary(message)}"
        console.print(line, highlight=False, markup=False)


def events(
    namespace: OptionalNamespaceOption = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Until Ctrl-C.")] = False,
    seconds: Annotated[float, typer.Option(help="How long to listen without --follow.")] = 5.0,
    heartbeats: Annotated[bool, typer.Option(help="Show heartbeats and metrics too.")] = False,
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """Print the platform's events as they happen (statuses, presence, replicas, results)."""
    with contextlib.suppress(TimeoutError):
        run_async(lambda: _follow(url, namespace, None if follow else seconds, as_json, heartbeats))


def register(app: typer.Typer) -> None:
    """Add `bus events` to the root app."""
    app.command("events")(events)
