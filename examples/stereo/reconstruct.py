"""From stereo pairs to a point cloud: split into strips, merge the strips' disparities,
check them against the ground truth, and write a PLY file.

Pure: no I/O but :func:`write_ply`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from examples.stereo.scene import Camera, StereoPair
from examples.stereo.tasks import pack

__all__ = ["ACCURACY_BOUND", "Strip", "accuracy", "merge", "point_cloud", "strips", "write_ply"]

#: The example's promise: at least this share of the pixels whose true disparity is known
#: (and that can be matched at all: not in the left band the right camera does not see)
#: come out within one disparity level of the truth. Pixels left unknown count as misses.
ACCURACY_BOUND = 0.95
#: Rows a strip needs above and below it: the census window plus the matching window.
MARGIN_ROWS = 6


@dataclass(frozen=True)
class Strip:
    """One task: rows ``start .. start + rows`` of pair ``pair``."""

    pair: int
    start: int
    rows: int


def strips(
    pair: StereoPair, rows: int, max_d: int, radius: int = 3
) -> Iterator[tuple[Strip, bytes]]:
    """Each strip of ``pair`` and its task's input."""
    height = pair.left.shape[0]
    for start in range(0, height, rows):
        count = min(rows, height - start)
        low, high = max(0, start - MARGIN_ROWS), min(height, start + count + MARGIN_ROWS)
        blob = pack(left=pair.left[low:high], right=pair.right[low:high], max_d=max_d,
                    radius=radius, top=start - low, rows=count)  # fmt: skip
        yield Strip(pair.index, start, count), blob


def merge(
    shape: tuple[int, int], parts: list[tuple[Strip, npt.NDArray[np.int16]]]
) -> npt.NDArray[np.float32]:
    """A pair's disparity map (pixels; -1 unknown) from its strips' fixed-point results."""
    merged = np.full(shape, -1.0, dtype=np.float32)
    for strip, fixed in parts:
        merged[strip.start : strip.start + strip.rows] = fixed / np.float32(16)
    return merged


def accuracy(estimate: npt.NDArray[np.float32], pair: StereoPair, max_d: int) -> tuple[int, int]:
    """(pixels within one level of the truth, pixels judged): see :data:`ACCURACY_BOUND`."""
    judged = pair.known.copy()
    judged[:, :max_d] = False
    good = judged & (estimate >= 0) & (np.abs(estimate - pair.truth) <= 1.0)
    return int(good.sum()), int(judged.sum())


def point_cloud(estimate: npt.NDArray[np.float32], pair: StereoPair, camera: Camera,
                offset_m: float = 0.0, stride: int = 1) -> npt.NDArray[np.float64]:  # fmt: skip
    """Rows of x, y, z (metres, the left camera's frame, shifted ``offset_m`` along x) and
    grey, one per matched pixel of every ``stride``-th row and column."""
    height, width = estimate.shape
    sampled = np.zeros_like(estimate, dtype=bool)
    sampled[::stride, ::stride] = True
    ys, xs = np.nonzero(sampled & (estimate > 0))
    z = camera.depth_m(estimate[ys, xs])
    x = (xs - width / 2) * z / camera.focal_px + offset_m
    y = -(ys - height / 2) * z / camera.focal_px
    return np.column_stack([x, y, z, pair.left[ys, xs].astype(np.float64)])


def write_ply(path: Path, points: npt.NDArray[np.float64]) -> None:
    """A binary PLY file of grey vertices (x, y, z in metres)."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
              ("blue", "u1")]  # fmt: skip
    vertices = np.empty(len(points), dtype=fields)
    for i, axis in enumerate("xyz"):
        vertices[axis] = points[:, i]
    for channel in ("red", "green", "blue"):
        vertices[channel] = points[:, 3].astype(np.uint8)
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(points)}\nproperty float x\nproperty float y\n"
              "property float z\nproperty uchar red\nproperty uchar green\n"
              "property uchar blue\nend_header\n")  # fmt: skip
    with path.open("wb") as out:
        out.write(header.encode())
        out.write(vertices.tobytes())
