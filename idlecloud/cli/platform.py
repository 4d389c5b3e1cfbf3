"""`bus status`, `bus dead-letters`, `bus schemas export` and `bus dev up`.

`bus status` says whether the platform serves: the broker is reachable, the platform's
exchanges and queues exist, and the quota manager and placement (and the auth service,
with `--service auth`) consume their request queues, i.e. one instance of each leads.
`bus status --wait S` waits for that, and `bus up` prints a line when what it runs serves.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

import aiormq
import typer
from rich.text import Text

from bus import names
from bus.connection import Bus
from bus.consumer import DEAD_REASON_HEADER
from bus.defaults import BROKER_URL
from bus.errors import BrokerUnavailable
from bus.topology import declare_platform
from idlecloud.cli._common import (
    Exit,
    JsonOption,
    UrlOption,
    console,
    fail,
    print_json,
    run_async,
    table,
)
from idlecloud.dev.cluster import ensure_cluster
from idlecloud.dev.docker import busybox_image, ensure_docker
from idlecloud.dev.influx import INFLUX_URL, ensure_influxdb
from idlecloud.dev.services import ensure_chromium, ensure_rabbitmq
from schemas import export_json_schemas

__all__ = [
    "CORE_SERVICES",
    "dev_app",
    "platform_status",
    "register",
    "schemas_app",
    "wait_until_ready",
]


schemas_app = typer.Typer(help="The message catalogue.", no_args_is_help=True)
dev_app = typer.Typer(help="Local services for development and demos.", no_args_is_help=True)

_PLATFORM_QUEUES = (names.DEAD_LETTER_QUEUE, names.JOURNAL_STREAM)
_PLATFORM_EXCHANGES = (*names.PLATFORM_EXCHANGES, names.ADMIN_DOOR)
#: The queue each control-plane service's leader consumes: it serves once that has a
#: consumer.
_SERVICE_QUEUES = {
    "quota": names.service_queue("quota", "requests"),
    "placement": names.service_queue("placement", "queries"),
    "auth": names.service_queue("auth", "requests"),
    "jobs": names.service_queue("jobs", "requests"),
}
#: What must serve unless told otherwise (the auth service runs only on a site with keys).
CORE_SERVICES = frozenset({"quota", "placement", "jobs"})


async def _exists(bus: Bus, name: str, kind: str) -> dict[str, int] | None:
    """A queue's counts, or ``{}`` for an exchange that exists; None if it does not."""
    channel = await bus.channel()
    try:
        if kind == "exchange":
            await channel.declare_exchange(name, passive=True)
            return {}
        declared = (await channel.declare_queue(name, passive=True)).declaration_result
        return {"messages": declared.message_count or 0, "consumers": declared.consumer_count or 0}
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None
    finally:
        if not channel.is_closed:
            await channel.close()


async def platform_status(url: str, required: frozenset[str] = CORE_SERVICES) -> dict[str, Any]:
    """The broker, the platform's exchanges and queues, which services serve, and whether
    every ``required`` one does."""
    async with Bus(url, connection_name="bus status") as bus:
        report: dict[str, Any] = {"broker": "reachable", "exchanges": {}, "queues": {},
                                  "services": {}}  # fmt: skip
        for exchange in _PLATFORM_EXCHANGES:
            found = await _exists(bus, exchange, "exchange")
            report["exchanges"][exchange] = "missing" if found is None else "present"
        for queue_name in (*_PLATFORM_QUEUES, *_SERVICE_QUEUES.values()):
            counts = await _exists(bus, queue_name, "queue")
            report["queues"][queue_name] = "missing" if counts is None else counts
        for service, queue_name in _SERVICE_QUEUES.items():
            state = report["queues"][queue_name]
            serving = isinstance(state, dict) and state["consumers"] > 0
            report["services"][service] = "serving" if serving else "not serving"
        missing = [name for name, state in report["exchanges"].items() if state == "missing"]
        missing += [name for name in _PLATFORM_QUEUES if report["queues"][name] == "missing"]
        missing += [f"the {name} service" for name in sorted(required)
                    if report["services"][name] != "serving"]  # fmt: skip
        report["missing"] = missing
        report["ready"] = not missing
        return report


async def wait_until_ready(
    url: str, timeout_s: float, required: frozenset[str] = CORE_SERVICES
) -> dict[str, Any]:
    """The status report once the platform serves, or the last one after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            report = await platform_status(url, required)
        except BrokerUnavailable:
            if time.monotonic() > deadline:
                raise
            report = None
        if report is not None and (report["ready"] or time.monotonic() > deadline):
            return report
        await asyncio.sleep(0.5)


def status(
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
    wait: Annotated[
        float,
        typer.Option(
            min=0,
            help="Wait up to this many seconds for the platform to serve (exit 3 if it does not).",
            show_default=False,
        ),
    ] = 0,
    service: Annotated[
        list[str] | None,
        typer.Option(
            help="A service that must serve: quota, placement, auth; repeat "
            "(default: quota and placement)."
        ),
    ] = None,
) -> None:
    """Show whether the broker is reachable, the platform's topology is in place and its
    services serve (`--wait 30` waits for `bus up` to be ready)."""
    required = frozenset(service or CORE_SERVICES)
    if unknown := required - _SERVICE_QUEUES.keys():
        fail(f"--service {sorted(unknown)[0]!r}: use quota, placement or auth")
    report = run_async(lambda: wait_until_ready(url, wait, required))
    if as_json:
        print_json(report)
    else:
        shown = table("name", "kind", "state")
        for exchange, state in report["exchanges"].items():
            shown.add_row(exchange, "exchange", state)
        for queue_name, state in report["queues"].items():
            counts = (
                state
                if isinstance(state, str)
                else f"{state['messages']} messages, {state['consumers']} consumers"
            )
            shown.add_row(queue_name, "queue", counts)
        for name, state in report["services"].items():
            shown.add_row(f"{name} service", "service", state)
        console.print(Text.assemble("broker: ", ("reachable", "green")))
        console.print(shown)
        console.print("ready" if report["ready"] else f"not ready: {', '.join(report['missing'])}")
    if wait and not report["ready"]:
        raise typer.Exit(Exit.UNREACHABLE)


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
    url: UrlOption = BROKER_URL,
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
    shown = table("at", "queue", "routing key", "schema", "reason")
    for item in found:
        shown.add_row(
            str(item["at"]),
            str(item["queue"]),
            str(item["routing_key"]),
            str(item["schema"]),
            str(item["reason"]),
        )
    console.print(shown)


@schemas_app.command("export")
def export(
    directory: Annotated[Path, typer.Argument(help="Where to write the JSON Schema files.")],
) -> None:
    """Write the JSON Schema of every message, so any language can publish them."""
    if directory.exists() and not directory.is_dir():
        fail(f"{directory} is a file; give a folder (it is made if missing)")
    try:
        written = export_json_schemas(directory)
    except OSError as error:
        fail(f"cannot write to {directory}: {error.strerror or error}")
    console.print(f"wrote {len(written)} files to {directory}")


@dev_app.command("up")
def dev_up(
    url: UrlOption = BROKER_URL,
    docker: Annotated[
        bool, typer.Option(help="Also start dockerd (no bridge) and build the test image.")
    ] = False,
    influxdb: Annotated[
        bool, typer.Option(help="Also start InfluxDB 1.x on 127.0.0.1:8086 (for metrics).")
    ] = False,
    chromium: Annotated[
        bool, typer.Option(help="Also install Debian's Chromium (for the page's browser tests).")
    ] = False,
    cluster: Annotated[
        int,
        typer.Option(
            help="Also start a RabbitMQ cluster of this many nodes on 127.0.0.1 (AMQP ports "
            "5681 on), besides the single broker (for failover tests and benchmarks).",
            min=0,
            max=9,
        ),
    ] = 0,
) -> None:
    """Install (as root) and start RabbitMQ on 127.0.0.1, and declare the platform topology."""
    with console.status("starting RabbitMQ on 127.0.0.1 ..."):
        run_async(lambda: _ensure_and_declare(url))
    console.print(f"RabbitMQ is up; platform topology declared. IDLECLOUD_URL={url}")
    if cluster:
        with console.status(f"starting a {cluster}-node RabbitMQ cluster ..."):
            cluster_url = ensure_cluster(cluster).url()
            run_async(lambda: _declare(cluster_url))
        console.print(f"the cluster is up; platform topology declared. IDLECLOUD_URL={cluster_url}")
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
    await _declare(url)


async def _declare(url: str) -> None:
    async with Bus(url, connection_name="bus dev up") as bus:
        await declare_platform(bus)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `bus` app."""
    app.command("status")(status)
    app.command("dead-letters")(dead_letters)
    app.add_typer(schemas_app, name="schemas")
    app.add_typer(dev_app, name="dev")
