"""Quantities of CPU and memory, bounded to what a lab could ever hold."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from schemas.base import WireModel

__all__ = ["MAX_CPU_MILLICORES", "MAX_MEMORY_MIB", "UNLIMITED", "CpuMillicores", "MemoryMib",
           "Resources"]  # fmt: skip

#: One core is 1000 millicores; 1024 cores is more than any PC or lab we target.
MAX_CPU_MILLICORES = 1_024_000
#: 16 TiB.
MAX_MEMORY_MIB = 16 * 1024 * 1024
CpuMillicores = Annotated[int, Field(ge=0, le=MAX_CPU_MILLICORES)]
MemoryMib = Annotated[int, Field(ge=0, le=MAX_MEMORY_MIB)]


class Resources(WireModel):
    """An amount of CPU (millicores) and memory (MiB)."""

    cpu_millicores: CpuMillicores = 0
    memory_mib: MemoryMib = 0


#: As much as any quantity may say: a limit that does not limit.
UNLIMITED = Resources(cpu_millicores=MAX_CPU_MILLICORES, memory_mib=MAX_MEMORY_MIB)
