"""Quantities of CPU and memory, bounded to what a lab could ever hold."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from schemas.base import WireModel

__all__ = ["CpuMillicores", "MemoryMib", "Resources"]

#: One core is 1000 millicores; 1024 cores is more than any PC or lab we target.
CpuMillicores = Annotated[int, Field(ge=0, le=1_024_000)]
#: Up to 16 TiB.
MemoryMib = Annotated[int, Field(ge=0, le=16 * 1024 * 1024)]


class Resources(WireModel):
    """An amount of CPU (millicores) and memory (MiB)."""

    cpu_millicores: CpuMillicores = 0
    memory_mib: MemoryMib = 0
