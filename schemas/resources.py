"""Quantities of CPU and memory: :class:`Resources` on the wire, bounded to what a lab could
ever hold, and :class:`Amount`, the one value every part computes with (sums, what is left,
whether one fits in another)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from schemas.base import WireModel

__all__ = ["MAX_CPU_MILLICORES", "MAX_MEMORY_MIB", "UNLIMITED", "ZERO", "Amount",
           "CpuMillicores", "CpuSeconds", "MemoryMib", "Resources"]  # fmt: skip

#: One core is 1000 millicores; 1024 cores is more than any PC or lab we target.
MAX_CPU_MILLICORES = 1_024_000
#: 16 TiB.
MAX_MEMORY_MIB = 16 * 1024 * 1024
CpuMillicores = Annotated[int, Field(ge=0, le=MAX_CPU_MILLICORES)]
MemoryMib = Annotated[int, Field(ge=0, le=MAX_MEMORY_MIB)]
#: CPU time, in seconds (up to 1e12: 30,000 core-years).
CpuSeconds = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]


class Resources(WireModel):
    """An amount of CPU (millicores) and memory (MiB)."""

    cpu_millicores: CpuMillicores = 0
    memory_mib: MemoryMib = 0


#: As much as any quantity may say: a limit that does not limit.
UNLIMITED = Resources(cpu_millicores=MAX_CPU_MILLICORES, memory_mib=MAX_MEMORY_MIB)


@dataclass(frozen=True, slots=True)
class Amount:
    """CPU (millicores) and memory (MiB) with arithmetic; may go negative in between (what
    is left of an overcommitted PC). :meth:`wire` bounds it for the wire."""

    cpu_millicores: int = 0
    memory_mib: int = 0

    @classmethod
    def of(cls, resources: Resources) -> Amount:
        """The amount a wire :class:`Resources` says."""
        return cls(resources.cpu_millicores, resources.memory_mib)

    def wire(self) -> Resources:
        """This amount on the wire, each part held between 0 and its maximum."""
        return Resources(
            cpu_millicores=min(max(0, self.cpu_millicores), MAX_CPU_MILLICORES),
            memory_mib=min(max(0, self.memory_mib), MAX_MEMORY_MIB),
        )

    def __add__(self, other: Amount) -> Amount:
        return Amount(
            self.cpu_millicores + other.cpu_millicores, self.memory_mib + other.memory_mib
        )

    def __sub__(self, other: Amount) -> Amount:
        return Amount(
            self.cpu_millicores - other.cpu_millicores, self.memory_mib - other.memory_mib
        )

    def __mul__(self, count: int) -> Amount:
        return Amount(self.cpu_millicores * count, self.memory_mib * count)

    __rmul__ = __mul__

    def shortfall(self, room: Amount) -> str | None:
        """The one fit check: None if this amount fits in ``room``, else which part does not
        (``"CPU"``, ``"memory"``, or ``"CPU and memory"``)."""
        short_cpu = self.cpu_millicores > room.cpu_millicores
        short_memory = self.memory_mib > room.memory_mib
        if short_cpu and short_memory:
            return "CPU and memory"
        return "CPU" if short_cpu else "memory" if short_memory else None

    def share_of(self, total: Amount) -> float:
        """The larger of its CPU and memory fractions of ``total`` (a dominant share)."""
        return max(self.cpu_millicores / max(1, total.cpu_millicores),
                   self.memory_mib / max(1, total.memory_mib))  # fmt: skip

    def __str__(self) -> str:
        return f"{self.cpu_millicores}m CPU and {self.memory_mib} MiB"


#: Nothing at all.
ZERO = Amount()
