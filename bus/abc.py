"""The library's interfaces, in one place (the agent's :class:`~nodeagent.runtime.Runtime` is
the agent's own)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bus.connection import Bus

__all__ = ["AppAddress", "Service", "TaskAddress"]


@runtime_checkable
class Service(Protocol):
    """A component the service runner starts on a shared bus and stops gracefully."""

    name: str

    async def start(self, bus: Bus) -> None:
        """Declare what it needs and start consuming."""

    async def stop(self, grace_s: float) -> None:
        """Stop taking work; finish in-flight work within ``grace_s`` and requeue the rest."""


class AppAddress(Protocol):
    """Where an app's tasks go: its namespace and id, and the broker its clients use.

    :class:`bus.sdk.app.App` is one; the SDK's clients need nothing more of it.
    """

    @property
    def namespace(self) -> str: ...

    @property
    def app(self) -> str: ...

    @property
    def url(self) -> str | None: ...


class TaskAddress(Protocol):
    """A task, as a client submits to it: its name (:class:`bus.sdk.app.Task` is one)."""

    @property
    def name(self) -> str: ...
