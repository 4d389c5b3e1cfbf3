"""Small helpers for the live tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from aio_pika.abc import AbstractIncomingMessage

from bus import names
from bus.codec import decode_event
from bus.connection import Bus
from bus.consumer import DEAD_REASON_HEADER
from bus.topology import QueueSpec, declare_door, declare_namespace
from nodeagent.agent import Agent, AgentSettings
from nodeagent.runtime import Runtime
from nodeagent.runtime.identity import Identities, uid_block
from nodeagent.runtime.process import ProcessRuntime
from nodeagent.tokens import TokenFiles
from schemas import Message, Owner

M = TypeVar("M", bound=Message)


class Events:
    """Events collected by :func:`collect_events`, picked by kind."""

    def __init__(self, seen: list[Message]) -> None:
        self.seen = seen

    def of(self, kind: type[M]) -> list[M]:
        return [event for event in self.seen if isinstance(event, kind)]


async def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float = 10.0,
    what: str = "condition",
    interval_s: float = 0.01,
) -> None:
    """Poll ``predicate`` every ``interval_s`` until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


class DeadLetterTap:
    """Collects what consumers dead-letter from one queue (bound by its dead-letter key)."""

    def __init__(self, source_queue: str) -> None:
        self.source_queue = source_queue
        self.messages: list[AbstractIncomingMessage] = []

    async def start(self, bus: Bus) -> DeadLetterTap:
        channel = await bus.channel()
        key = names.dead_letter_target(self.source_queue).routing_key
        spec = QueueSpec.private(
            f"idlecloud.test.dead.{id(self):x}", (names.DEAD_LETTER_EXCHANGE, key)
        )
        queue = await spec.declare(channel)
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(message)

    def reasons(self) -> list[str]:
        return [str((m.headers or {}).get("idlecloud-dead-reason")) for m in self.messages]

    def header(self, index: int, key: str) -> Any:
        return (self.messages[index].headers or {}).get(key)


async def collect_events(
    bus: Bus,
    routing_key: str,
    parse: Callable[[AbstractIncomingMessage], Any] = decode_event,
) -> list[Any]:
    """Everything published on ``idlecloud.events`` under ``routing_key``, parsed (by
    default: the message it carries, checked), in order; a PC's dead letters (which travel
    there under its ``node.<pc>.dead`` key) are not events and are left out.

    The list fills while the test runs (a private queue, gone with the connection).
    """
    found: list[Any] = []

    async def on_message(message: AbstractIncomingMessage) -> None:
        if DEAD_REASON_HEADER not in (message.headers or {}):
            found.append(parse(message))

    channel = await bus.channel()
    tap = await QueueSpec.private(
        f"idlecloud.test.tap.{uuid.uuid4().hex[:12]}", (names.EVENTS_EXCHANGE, routing_key)
    ).declare(channel)
    await tap.consume(on_message, no_ack=True)
    return found


def replica_dir(node: str) -> Path:
    """Where a test PC's replicas have their homes and tokens: a folder their uids can
    reach (pytest's own temporary folders are private to root)."""
    return Path("/var/tmp/idlecloud-test") / node


def identities(node: str) -> Identities:
    """Replica identities for a test PC: a uid block of its own, chosen by its name."""
    return Identities(replica_dir(node), uid_block(f"test/{node}"))


def process_runtime(state_dir: Path, node: str, **options: Any) -> ProcessRuntime:
    """A process runtime whose cgroups live under a test-only parent named for ``node``,
    with replicas under identities of their own."""
    options.setdefault("identities", identities(node))
    return ProcessRuntime(state_dir, cgroup_parent=f"idlecloud-test/{node}", **options)


@asynccontextmanager
async def running_agent(
    bus: Bus,
    settings: AgentSettings,
    state_dir: Path,
    runtime: Runtime | None = None,
    wall_clock: Callable[[], datetime] = datetime.now,
) -> AsyncIterator[Agent]:
    """An agent (by default with the process runtime) started on ``bus``; stopped with its
    replicas."""
    runtime = runtime or process_runtime(state_dir, settings.node)
    agent = Agent(settings, runtime, TokenFiles(replica_dir(settings.node)), wall_clock=wall_clock)
    await agent.start(bus)
    try:
        yield agent
    finally:
        await agent.stop(1)
        for replica in await agent.runtime.replicas():
            await agent.runtime.stop(replica.replica_id, 0)
        await agent.runtime.close()


def always() -> bool:
    """A runtime's ``may_run`` for tests with no presence: the PC always takes replicas."""
    return True


async def open_namespace(bus: Bus, namespace: str) -> None:
    """Declare a namespace's door and events view, as the platform does once its quota is
    set or its user trades a key."""
    channel = await bus.channel()
    await declare_namespace(channel, namespace)
    await channel.close()


async def open_doors(bus: Bus, *nodes: str) -> None:
    """Declare PCs' doors, as the auth service does when a PC trades its key: for a test
    that speaks for PCs on the platform's own connection."""
    channel = await bus.channel()
    for node in nodes:
        await declare_door(channel, Owner.node(node))
    await channel.close()


def ledger_by_pc(ledger: Path) -> list[tuple[str, int]]:
    """The units of work computed, in order, with the PC each was computed on (a ledger
    of ``<PC> <unit>`` lines, as ``tests.programs.checkpoint_app`` writes it)."""
    lines = ledger.read_text().splitlines() if ledger.exists() else []
    return [(line.split()[0], int(line.split()[1])) for line in lines]
