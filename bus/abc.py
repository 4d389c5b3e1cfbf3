"""The interfaces components implement, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bus.connection import Bus

__all__ = ["Service"]


@runtime_checkable
class Service(Protocol):
    """A component the service runner starts on a shared bus and stops gracefully."""

    name: str

    async def start(self, bus: Bus) -> None:
        """Declare what it needs and start consuming."""

    async def stop(self, grace_s: float) -> None:
        """Stop taking work; finish in-flight work within ``grace_s`` and requeue the rest."""
