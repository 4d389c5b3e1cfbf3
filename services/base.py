"""What every control-plane service shares: the journal replayed into a desired state,
and leadership (one active instance, the others hot standbys)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from bus.connection import Bus
from bus.journal import Journal
from bus.leader import Leadership
from bus.service import supervised
from bus.topology import QueueSpec
from schemas.journal import Entry
from services.state import DesiredState

__all__ = ["ControlService"]


class ControlService:
    """A service that follows the journal always and acts only while it leads.

    Subclasses set ``name`` and override the hooks: :meth:`leader_queues`,
    :meth:`applied` (after each entry),
    :meth:`follow` / :meth:`unfollow` (what every instance does, leader or not) and
    :meth:`lead` / :meth:`step_down` (what only the leader does). Work started with
    :meth:`while_leading` is cancelled before :meth:`step_down` runs.
    """

    name = "control"

    def __init__(self, *, retry_s: float = 0.5) -> None:
        self.state = DesiredState()
        self.journal = Journal(self._apply)
        self.leadership = Leadership(
            self.name, self.journal, self._elected, self._deposed, retry_s=retry_s
        )
        self._bus: Bus | None = None
        self._leader_tasks: list[asyncio.Task[None]] = []

    @property
    def bus(self) -> Bus:
        """The bus the service was started on."""
        if self._bus is None:
            raise RuntimeError(f"{self.name} was not started")
        return self._bus

    async def start(self, bus: Bus) -> None:
        """Declare the leader's queues, replay the journal, follow, compete for leadership.

        The queues only the leader consumes are declared by every instance, so requests
        wait there (durably) while no instance leads yet or leadership changes hands.
        """
        self._bus = bus
        channel = await bus.channel()
        for spec in self.leader_queues():
            await spec.declare(channel)
        await channel.close()
        await self.journal.start(bus)
        await self.journal.catch_up()
        await self.follow(bus)
        self.leadership.start(bus)

    async def stop(self, grace_s: float) -> None:
        """Give up leadership (if held) and stop following."""
        await self.leadership.stop()
        await self.unfollow(grace_s)

    def _apply(self, entry: Entry) -> None:
        self.state.apply(entry)
        self.applied(entry)

    async def _elected(self, epoch: int) -> None:
        await self.journal.catch_up()  # act on everything the previous leader wrote
        await self.lead(epoch)

    async def _deposed(self) -> None:
        tasks, self._leader_tasks = self._leader_tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.step_down()

    def while_leading(self, name: str, duty: Callable[[], Awaitable[None]]) -> None:
        """Run ``duty`` (a loop, say) until this instance stops leading; if it fails, it is
        logged and started again (:func:`bus.service.supervised`)."""
        task = asyncio.get_running_loop().create_task(supervised(f"{self.name} {name}", duty))
        self._leader_tasks.append(task)

    def leader_queues(self) -> tuple[QueueSpec, ...]:
        """The queues only the leader consumes."""
        return ()

    def applied(self, entry: Entry) -> None:
        """An entry was applied to :attr:`state`."""

    async def follow(self, bus: Bus) -> None:
        """Start what every instance does (consume events, say)."""

    async def unfollow(self, grace_s: float) -> None:
        """Stop what :meth:`follow` started."""

    async def lead(self, epoch: int) -> None:
        """Start acting as the leader with this epoch."""

    async def step_down(self) -> None:
        """Stop acting as the leader."""
