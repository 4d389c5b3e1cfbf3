"""How the benchmarks summarise what they measured."""

from __future__ import annotations

import statistics

__all__ = ["percentile", "summary"]

#: Fewer samples than this make no p99: the worst one is printed instead.
P99_SAMPLES = 100


def percentile(values: list[float], share: float) -> float:
    """The value below which ``share`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def summary(name: str, values: list[float], unit: str = "ms", digits: int = 1) -> list[str]:
    """``name``'s sample count, median, and p99 (with >= 100 samples) or else its maximum."""
    lines = [
        f"{name}_samples: {len(values)}",
        f"{name}_p50_{unit}: {statistics.median(values):.{digits}f}",
    ]
    if len(values) >= P99_SAMPLES:
        lines.append(f"{name}_p99_{unit}: {percentile(values, 0.99):.{digits}f}")
    lines.append(f"{name}_max_{unit}: {max(values):.{digits}f}")
    return lines
