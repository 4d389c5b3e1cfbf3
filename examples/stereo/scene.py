"""Synthetic stereo pairs with known ground truth: random-dot stereograms of a simple scene.

A scene is a tilted floor with boxes and a ball in front of it, seen by two rectified
cameras. Each point of the scene gets a random grey level (a random-dot texture, which
block matching handles well), and the pair is rendered so that a point at column ``x`` of
the right image appears at column ``x + d`` of the left, ``d`` its disparity. Nearer
points (larger ``d``) are painted last, so they hide what is behind them in the left
image; left pixels that no right pixel paints are occluded and have no ground truth.
Everything is deterministic in the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Camera", "StereoPair", "make_pair"]

U8 = npt.NDArray[np.uint8]
I16 = npt.NDArray[np.int16]


@dataclass(frozen=True)
class Camera:
    """A rectified stereo rig: focal length (pixels) and baseline (metres)."""

    focal_px: float = 500.0
    baseline_m: float = 0.12

    def depth_m(self, disparity: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """Depth of each disparity (no depth where the disparity is not positive)."""
        d = np.asarray(disparity, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return np.where(d > 0, self.focal_px * self.baseline_m / d, np.nan)


@dataclass(frozen=True)
class StereoPair:
    """Two images, the left image's true disparity, and where it is known (not occluded)."""

    index: int
    left: U8
    right: U8
    truth: I16
    known: npt.NDArray[np.bool_]


def _disparity_map(rng: np.random.Generator, height: int, width: int, max_d: int) -> I16:
    """The right camera's view of the scene: each pixel's disparity."""
    rows = np.arange(height, dtype=np.float64)[:, None]
    floor = 4 + (rows / height) * (max_d * 0.3)  # farther at the top, nearer at the bottom
    d = np.broadcast_to(floor, (height, width)).copy()
    for _ in range(int(rng.integers(3, 6))):  # boxes
        h, w = (
            int(rng.integers(height // 8, height // 3)),
            int(rng.integers(width // 10, width // 4)),
        )
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w - max_d))
        d[y : y + h, x : x + w] = np.maximum(
            d[y : y + h, x : x + w], rng.integers(max_d // 3, max_d // 1.4)
        )
    cy, cx = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 4, 3 * width // 4)
    radius = min(height, width) // 6
    yy, xx = np.mgrid[0:height, 0:width]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    bulge = np.sqrt(np.clip(radius**2 - (yy - cy) ** 2 - (xx - cx) ** 2, 0, None)) / radius
    d = np.where(inside, np.maximum(d, max_d * (0.6 + 0.35 * bulge)), d)  # a ball
    return np.clip(np.rint(d), 0, max_d - 1).astype(np.int16)


def make_pair(
    index: int, height: int = 240, width: int = 320, max_d: int = 48, seed: int = 2017
) -> StereoPair:
    """The ``index``-th pair of a deterministic series."""
    rng = np.random.default_rng([seed, index])
    d_right = _disparity_map(rng, height, width, max_d)
    right = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
    left = rng.integers(0, 256, size=(height, width), dtype=np.uint8)  # where nothing lands
    truth = np.full((height, width), -1, dtype=np.int16)
    for level in np.unique(d_right):  # far to near: nearer points hide farther ones
        ys, xs = np.nonzero(d_right == level)
        target = xs + int(level)
        keep = target < width
        left[ys[keep], target[keep]] = right[ys[keep], xs[keep]]
        truth[ys[keep], target[keep]] = level
    return StereoPair(index, left, right, truth, truth >= 0)
