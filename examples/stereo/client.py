"""The researcher's side: make stereo pairs, send their strips to the workers, merge the
disparities into one point cloud and check it against the ground truth.

    python -m examples.stereo.client --pairs 8 --out stereo-out

It needs what any client needs: IDLECLOUD_URL (or IDLECLOUD_API_KEY and
IDLECLOUD_AUTH_URL) and IDLECLOUD_NAMESPACE. All state stays here: the workers keep none.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bus.sdk import TaskClient, connect_app
from examples.stereo.reconstruct import (
    ACCURACY_BOUND,
    Strip,
    accuracy,
    merge,
    point_cloud,
    strips,
    write_ply,
)
from examples.stereo.scene import Camera, StereoPair, make_pair
from examples.stereo.tasks import app, match_strip, unpack

__all__ = ["Job", "JobReport", "main", "reconstruct"]


@dataclass(frozen=True)
class Job:
    """How much work: pairs of ``height`` x ``width`` pixels, disparities 0 .. max_d - 1,
    cut into strips of ``rows`` rows (one task each)."""

    pairs: int = 72
    height: int = 480
    width: int = 640
    max_d: int = 128
    rows: int = 120

    @property
    def tasks(self) -> int:
        """How many tasks the job makes."""
        return self.pairs * -(-self.height // self.rows)


@dataclass
class JobReport:
    """What a job did and how good its reconstruction is."""

    tasks: int
    pairs: int
    cpu_s: float = 0.0
    good: int = 0
    judged: int = 0
    points: int = 0
    duration_s: float = 0.0
    ply: Path | None = None
    per_pair: list[float] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """The share of judged pixels within one disparity level of the truth."""
        return self.good / self.judged if self.judged else 0.0

    @property
    def within_bound(self) -> bool:
        """Whether the example kept its promise (:data:`ACCURACY_BOUND`)."""
        return self.accuracy >= ACCURACY_BOUND


async def reconstruct(
    client: TaskClient,
    job: Job,
    ply: Path,
    *,
    on_result: Callable[[int], None] | None = None,
    progress: bool | None = None,
) -> JobReport:
    """Run ``job`` on the workers behind ``client`` and write its point cloud to ``ply``.

    Args:
        client: a started client of :data:`examples.stereo.tasks.app`.
        job: the pairs and how they are cut.
        ply: where the point cloud goes.
        on_result: called with the number of tasks done after each result.
        progress: show a progress bar (default: when stderr is a terminal).
    """
    started = time.monotonic()
    pairs: dict[int, StereoPair] = {}
    order: list[Strip] = []

    def inputs() -> Iterator[bytes]:
        for index in range(job.pairs):
            pair = make_pair(index, job.height, job.width, job.max_d)
            pairs[index] = pair
            for strip, blob in strips(pair, job.rows, job.max_d):
                order.append(strip)
                yield blob

    report = JobReport(job.tasks, job.pairs)
    results: dict[int, list[tuple[Strip, npt.NDArray[np.int16]]]] = {}
    done = 0
    async for index, value in client.map(match_strip, inputs(), progress=progress):
        result = unpack(value)
        strip = order[index]
        results.setdefault(strip.pair, []).append((strip, result["disparity"]))
        report.cpu_s += float(result["cpu_s"])
        done += 1
        if on_result is not None:
            on_result(done)
    clouds = []
    for index in sorted(results):
        pair = pairs.pop(index)
        estimate = merge(pair.left.shape, results.pop(index))
        good, judged = accuracy(estimate, pair, job.max_d)
        report.good, report.judged = report.good + good, report.judged + judged
        report.per_pair.append(good / judged if judged else 0.0)
        clouds.append(point_cloud(estimate, pair, Camera(), offset_m=3.0 * index, stride=4))
    points = np.concatenate(clouds) if clouds else np.empty((0, 4))
    write_ply(ply, points)
    report.points, report.ply = len(points), ply
    report.duration_s = time.monotonic() - started
    return report


async def _run(job: Job, out: Path) -> JobReport:
    bus = await connect_app(app, "stereo client")
    try:
        async with TaskClient(bus, app) as client:
            return await reconstruct(client, job, out / "cloud.ply")
    finally:
        await bus.close()


def main() -> None:
    """Run a job from the command line and print how it went."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=Job.pairs)
    parser.add_argument("--out", type=Path, default=Path("stereo-out"))
    arguments = parser.parse_args()
    arguments.out.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(_run(Job(pairs=arguments.pairs), arguments.out))
    print(
        f"{report.tasks} tasks in {report.duration_s:.1f} s ({report.cpu_s / 60:.1f} CPU-minutes);"
        f" {report.accuracy:.2%} of pixels within 1 level (bound {ACCURACY_BOUND:.0%});"
        f" {report.points} points in {report.ply}"
    )
    raise SystemExit(0 if report.within_bound else 1)


if __name__ == "__main__":
    main()
