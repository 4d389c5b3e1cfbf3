"""What the demo shows while it runs: the PCs, the app's replicas, the job's progress and
what just happened, kept from the platform's own events and questions.

:class:`Watch` is the admin's console: it taps presence and replica events and asks
placement for the PCs and the app every half second. :func:`screen` renders one frame of
the live terminal view; without a terminal, :meth:`Watch.note` prints each happening as a
line instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from bus import names
from bus.codec import decode_event
from bus.connection import Bus
from bus.errors import BusError, InvalidMessage
from bus.rpc import RpcClient
from bus.topology import QueueSpec
from schemas import (
    AppsQuery,
    AppsReply,
    AppView,
    NodeHeartbeat,
    NodePresence,
    NodesQuery,
    NodesReply,
    NodeView,
    Owner,
    ReplicaStatus,
)

__all__ = ["Watch", "screen"]

_STATE_STYLE = {"idle": "green", "busy": "red", "lost": "red", "cordoned": "yellow",
                "draining": "yellow"}  # fmt: skip


@dataclass
class Watch:
    """The platform as the demo sees it, and the figures its summary reports."""

    namespace: str
    app: str
    person_at: str
    total_tasks: int
    console: Console
    live: bool
    done: int = 0
    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)
    nodes: tuple[NodeView, ...] = ()
    view: AppView | None = None
    log: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    login_at: float | None = None  # wall-clock time of the utmp record
    logout_at: float | None = None
    busy_seen_at: float | None = None  # when the busy event arrived (replicas frozen by then)
    seen_before_login: set[str] = field(default_factory=set)
    rescheduled: set[str] = field(default_factory=set)  # replicas started elsewhere after it
    evicted: set[str] = field(default_factory=set)  # replicas of the PC that ended while busy
    paused: set[str] = field(default_factory=set)
    used_again_at: float | None = None
    _at_person: set[str] = field(default_factory=set)  # our replicas on the person's PC
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _asking: asyncio.Task[None] | None = None

    def progress(self, done: int) -> None:
        """The job has ``done`` tasks done."""
        self.done = done
        self.changed.set()

    async def until(self, predicate: Callable[[], bool], timeout_s: float | None = None) -> None:
        """Wait until ``predicate`` holds (re-checked at every change), or ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()

    async def start(self, bus: Bus) -> None:
        """Tap the events and start asking placement."""
        channel = await bus.channel()
        tap = await QueueSpec.private(
            names.service_queue("demo", f"watch.{id(self):x}"),
            *((names.EVENTS_EXCHANGE, key) for key in names.node_event_keys()),
        ).declare(channel)
        await tap.consume(self._on_event, no_ack=True)
        nodes = await RpcClient(bus, Owner.platform()).start()
        apps = await RpcClient(bus, Owner.namespace(self.namespace)).start()
        self._asking = asyncio.create_task(self._ask(nodes, apps))

    async def stop(self) -> None:
        """Stop asking."""
        if self._asking is not None:
            self._asking.cancel()

    async def _ask(self, nodes: RpcClient, apps: RpcClient) -> None:
        while True:
            try:
                self.nodes = (await nodes.call(NodesQuery(), NodesReply, timeout_s=5)).nodes
                query = AppsQuery(namespace=self.namespace, app=self.app)
                found = (await apps.call(query, AppsReply, timeout_s=5)).apps
                self.view = found[0] if found else None
            except BusError:
                pass  # placement is changing hands; ask again
            await asyncio.sleep(0.5)

    def note(self, line: str) -> None:
        """Record a happening (and print it where there is no live view)."""
        stamped = f"{time.monotonic() - self.started:6.1f} s  {line}"
        self.log.append(stamped)
        if not self.live:
            self.console.print(stamped, highlight=False)

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            event = decode_event(message)
        except InvalidMessage:
            return  # the platform's consumers dead-letter it; the console just looks away
        now = time.time()
        self.changed.set()
        if isinstance(event, NodePresence) and event.node == self.person_at:
            if event.presence.state.value == "busy" and self.login_at and not self.busy_seen_at:
                self.busy_seen_at = now
                self.note(f"{event.node}: busy ({event.presence.cause.value}); its replicas were "
                          f"frozen, then it told the platform {1000 * (now - self.login_at):.0f} ms"
                          " after the login")  # fmt: skip
            elif event.presence.state.value != "busy" and self.logout_at:
                self.note(f"{event.node}: {event.presence.state.value} again")
        elif isinstance(event, ReplicaStatus) and event.app == self.app:
            self._on_replica(event, now)
        elif isinstance(event, NodeHeartbeat):
            self._on_heartbeat(event, now)

    def _on_replica(self, event: ReplicaStatus, now: float) -> None:
        replica = event.replica_id
        if self.login_at is None or now < self.login_at:
            self.seen_before_login.add(replica)
        elif (event.node != self.person_at and event.state.value == "running"
              and replica not in self.seen_before_login and self.logout_at is None):  # fmt: skip
            self.rescheduled.add(replica)
            self.note(f"placement: replica {replica} started on {event.node}")

    def _on_heartbeat(self, beat: NodeHeartbeat, now: float) -> None:
        """The person's PC: which of our replicas it pauses, loses (evicted) and runs."""
        if beat.node != self.person_at:
            return
        mine = {r.replica_id: r.state.value for r in beat.replicas
                if r.namespace == self.namespace and r.app == self.app}  # fmt: skip
        present = self.login_at is not None and now > self.login_at and self.logout_at is None
        if present:
            self.paused |= {replica for replica, state in mine.items() if state == "paused"}
            for replica in sorted((self._at_person - mine.keys()) & self.paused - self.evicted):
                self.evicted.add(replica)
                self.note(f"{beat.node}: paused replica {replica} evicted (its replacement runs)")
        elif self.logout_at and self.used_again_at is None and "running" in mine.values():
            self.used_again_at = now
            self.note(f"{beat.node}: runs stereo replicas again, "
                      f"{now - self.logout_at:.1f} s after the person left")  # fmt: skip
        self._at_person = set(mine)


def _node_row(node: NodeView, view: AppView | None) -> tuple[str, ...]:
    ours = (view.replicas_per_node.get(node.node, 0)) if view else 0
    style = _STATE_STYLE.get(node.state, "white")
    cause = f" ({node.cause})" if node.state == "busy" else ""
    return (node.node, f"[{style}]{node.state}{cause}[/]",
            f"{node.reserved.cpu_millicores // 1000}/{node.allocatable.cpu_millicores // 1000}",
            str(ours), str(node.replicas))  # fmt: skip


def screen(watch: Watch) -> RenderableType:
    """One frame of the live view."""
    pcs = Table("PC", "state", "cores reserved", "stereo replicas", "all replicas")
    for node in sorted(watch.nodes, key=lambda n: n.node):
        pcs.add_row(*_node_row(node, watch.view))
    view = watch.view
    app = Text("stereo: deploying")
    if view is not None:
        app = Text.from_markup(f"[bold]{view.app}[/]: {view.state.value}, "
                               f"{view.running}/{view.desired} replicas running"
                               + (f" - {view.reason}" if view.reason else ""))  # fmt: skip
    filled = round(40 * watch.done / max(1, watch.total_tasks))
    progress = Text.from_markup(f"tasks [green]{'█' * filled}[/][dim]{'░' * (40 - filled)}[/] "
                                f"{watch.done}/{watch.total_tasks}")  # fmt: skip
    happenings = Text("\n".join(watch.log) or "-")
    elapsed = time.monotonic() - watch.started
    return Panel(Group(Text.from_markup(f"[bold]{watch.phase}[/]  ({elapsed:.0f} s)"), pcs, app,
                       progress, Panel(happenings, title="what happened")),
                 title="idlecloud demo: 3D reconstruction on four lab PCs")  # fmt: skip
