"""`bus status`, `bus dead-letters`, `bus schemas export` and `bus dev up`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import aiormq
import typer
from rich.table import Table

from bus import names
from bus.cli._common import DEFAULT_URL, JsonOption, UrlOption, console, print_json, run_async
from bus.connection import Bus
from bus.consumer import DEAD_REASON_HEADER
from bus.devdocker import busybox_image, ensure_docker
from bus.devinflux import INFLUX_URL, ensure_influxdb
from bus.devservices import ensure_chromium, ensure_rabbitmq
from bus.topology import declare_platform
from schemas import export_json_schemas

__all__ = ["dev_app", "register", "schemas_app"]

schemas_app = typer.Typer(help="The message catalogue.", no_args_is_help=True)
dev_app = typer.Typer(help="Local services for development and demos.", no_args_is_help=True)

_PLATFORM_QUEUES = (names.DEAD_LETTER_QUEUE, names.JOURNAL_STREAM)
_PLATFORM_EXCHANGES = (names.EVENTS_EXCHANGE, names.COMMANDS_EXCHANGE, names.DEAD_LETTER_EXCHANGE)


async def _status(url: str) -> dict[str, Any]:
    async with Bus(url, connection_name="bus status") as bus:
        report: dict[str, Any] = {"broker": "reachable", "exchanges": {}, "queues": {}}
        for exchange in _PLATFORM_EXCHANGES:
            channel = await bus.channel()
            try:
                await channel.declare_exchange(exchange, passive=True)
                report["exchanges"][exchange] = "present"
            except aiormq.exceptions.ChannelNotFoundEntity:
                report["exchanges"][exchange] = "missing"
            finally:
                if not channel.is_closed:
                    await channel.close()
        for queue_name in _PLATFORM_QUEUES:
            channel = await bus.channel()
            try:
                queue = await channel.declare_queue(queue_name, passive=True)
                declared = queue.declaration_result
                report["queues"][queue_name] = {
                    "messages": declared.message_count,
                    "consumers": declared.consumer_count,
                }
            except aiormq.exceptions.ChannelNotFoundEntity:
                report["queues"][queue_name] = "missing"
            finally:
                if not channel.is_closed:
                    await channel.close()
        return report


def status(url: UrlOption = DEFAULT_URL, as_json: JsonOption = False) -> None:
    """Show whether the broker is reachable and the platform's topology is in place."""
    report = run_async(lambda: _status(url))
    if as_json:
        print_json(report)
        return
    table = Table("name", "kind", "state")
    for exchange, state in report["exchanges"].items():
        table.add_row(exchange, "exchange", state)
    for queue_name, state in report["queues"].items():
        shown = (
            state
            if isinstance(state, str)
            else f"{state['messages']} messages, {state['consumers']} consumers"
        )
        table.add_row(queue_name, "queue", shown)
    console.print("broker: [green]reachable[/]")
    console.print(table)


async def _peek_dead_letters(url: str, limit: int) -> list[dict[str, Any]]:
    async with Bus(url, connection_name="bus dead-letters") as bus:
        channel = await bus.channel()
        queue = await channel.declare_queue(names.DEAD_LETTER_QUEUE, passive=True)
        found: list[dict[str, Any]] = []
        while len(found) < limit:
            incoming = await queue.get(fail=False)
            if incoming is None:
                break
            headers = incoming.headers or {}
            found.append(
                {
                    "queue": headers.get("idlecloud-dead-queue"),
                    "reason": headers.get(DEAD_REASON_HEADER),
                    "at": headers.get("idlecloud-dead-at"),
                    "routing_key": headers.get("idlecloud-original-routing-key"),
                    "schema": headers.get("idlecloud-schema"),
                    "body_bytes": headers.get("idlecloud-original-body-bytes"),
                }
            )
        await channel.close()  # unacked: every message goes back to the queue
        return found


def dead_letters(
    url: UrlOption = DEFAULT_URL,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Show at most this many.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List dead-lettered messages with the reason each was refused (they stay queued)."""
    found = run_async(lambda: _peek_dead_letters(url, limit))
    if as_json:
        print_json(found)
        return
    if not found:
        console.print("no dead-lettered messages")
        return
    table = Table("at", "queue", "routing key", "schema", "reason")
    for item in found:
        table.add_row(
            str(item["at"]),
            str(item["queue"]),
            str(item["routing_key"]),
            str(item["schema"]),
            str(item["reason"]),
        )
    console.print(table)


@schemas_app.command("export")
def export(
    directory: Annotated[Path, typer.Argument(help="Where to write the JSON Schema files.")],
) -> None:
    """Write the JSON Schema of every message, so any language can publish them."""
    written = export_json_schemas(directory)
    console.print(f"wrote {len(written)} files to {directory}")


@dev_app.command("up")
def dev_up(
    url: UrlOption = DEFAULT_URL,
    docker: Annotated[
        bool, typer.Option(help="Also start dockerd (no bridge) and build the test image.")
    ] = False,
    influxdb: Annotated[
        bool, typer.Option(help="Also start InfluxDB 1.x on 127.0.0.1:8086 (for metrics).")
    ] = False,
    chromium: Annotated[
        bool, typer.Option(help="Also install Debian's Chromium (for the page's browser tests).")
    ] = False,
) -> None:
    """Install (as root) and start RabbitMQ on 127.0.0.1, and declare the platform topology."""
    with console.status("starting RabbitMQ on 127.0.0.1 ..."):
        run_async(lambda: _ensure_and_declare(url))
    console.print(f"RabbitMQ is up; platform topology declared. IDLECLOUD_URL={url}")
    if docker:
        with console.status("starting dockerd and building the test image ..."):
            ensure_docker()
            image = busybox_image()
        console.print(f"dockerd is up; test image {image} built")
    if influxdb:
        with console.status("starting InfluxDB on 127.0.0.1:8086 ..."):
            ensure_influxdb()
        console.print(f"InfluxDB is up at {INFLUX_URL}")
    if chromium:
        with console.status("installing Chromium ..."):
            console.print(f"Chromium is at {ensure_chromium()}")


async def _ensure_and_declare(url: str) -> None:
    ensure_rabbitmq()
    async with Bus(url, connection_name="bus dev up") as bus:
        await declare_platform(bus)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `bus` app."""
    app.command("status")(status)
    app.command("dead-letters")(dead_letters)
    app.add_typer(schemas_app, name="schemas")
    app.add_typer(dev_app, name="dev")
