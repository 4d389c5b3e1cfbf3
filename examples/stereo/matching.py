"""Block matching: a disparity map from a rectified pair, with numpy alone.

The cost of matching a left pixel to the right pixel ``d`` columns to its left is
AD-Census (Mei et al., 2011): the absolute grey-level difference and the Hamming distance
of the two pixels' census signatures (which neighbours of a 7 x 7 window are darker than
the centre), each mapped through ``1 - exp(-c / lambda)`` and added. Costs are summed over
a square window (box-filtered with an integral image, so its size costs nothing) and the
winner takes all. A left-right consistency check marks pixels whose right-to-left match
disagrees (occlusions, mostly) as unknown (-1), and a parabola through the three costs
around the winner gives sub-pixel disparities.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["disparity"]

F32 = npt.NDArray[np.float32]
U64 = npt.NDArray[np.uint64]
_NO_MATCH = np.float32(2.0)  # the worst a pixel's cost can be
_LAMBDA_AD, _LAMBDA_CENSUS = np.float32(10.0), np.float32(30.0)
_CENSUS_RADIUS = 3


def census(image: F32, radius: int = _CENSUS_RADIUS) -> U64:
    """Each pixel's signature: one bit per neighbour in its window, set if darker."""
    height, width = image.shape
    padded = np.pad(image, radius, mode="edge")
    signature = np.zeros((height, width), dtype=np.uint64)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy or dx:
                neighbour = padded[radius + dy : radius + dy + height,
                                   radius + dx : radius + dx + width]  # fmt: skip
                signature = (signature << np.uint64(1)) | (neighbour < image)
    return signature


def _pixel_cost(a: F32, b: F32, census_a: U64, census_b: U64) -> F32:
    ad = np.abs(a - b)
    hamming = np.bitwise_count(census_a ^ census_b).astype(np.float32)
    return (2 - np.exp(-ad / _LAMBDA_AD) - np.exp(-hamming / _LAMBDA_CENSUS)).astype(np.float32)


def _box(cost: F32, radius: int) -> F32:
    """Sum over a (2r+1)-square window around each pixel of each plane (edges clamped)."""
    padded = np.pad(cost, ((0, 0), (radius + 1, radius), (radius + 1, radius)), mode="edge")
    integral = padded.cumsum(axis=1, dtype=np.float32).cumsum(axis=2, dtype=np.float32)
    n = 2 * radius + 1
    return (integral[:, n:, n:] - integral[:, :-n, n:] - integral[:, n:, :-n]
            + integral[:, :-n, :-n])  # fmt: skip


def _costs(reference: F32, other: F32, max_d: int, radius: int, sign: int) -> F32:
    """Aggregated costs (d, y, x) of matching ``reference`` to ``other`` shifted by ``sign*d``."""
    height, width = reference.shape
    census_ref, census_other = census(reference), census(other)
    raw = np.full((max_d, height, width), _NO_MATCH, dtype=np.float32)
    for d in range(max_d):
        if sign < 0:  # left reference: its pixel x matches right pixel x - d
            raw[d, :, d:] = _pixel_cost(
                reference[:, d:],
                other[:, : width - d],
                census_ref[:, d:],
                census_other[:, : width - d],
            )
        else:  # right reference: its pixel x matches left pixel x + d
            raw[d, :, : width - d] = _pixel_cost(
                reference[:, : width - d],
                other[:, d:],
                census_ref[:, : width - d],
                census_other[:, d:],
            )
    return _box(raw, radius)


def _subpixel(costs: F32, best: npt.NDArray[np.intp]) -> F32:
    d_max = costs.shape[0] - 1
    inner = np.clip(best, 1, d_max - 1)
    take = lambda offset: np.take_along_axis(costs, (inner + offset)[None], 0)[0]  # noqa: E731
    c0, c1, c2 = take(-1), take(0), take(1)
    denominator = c0 - 2 * c1 + c2
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(denominator > 0, (c0 - c2) / (2 * denominator), 0.0)
    edge = (best == 0) | (best == d_max)
    return np.where(edge, best, inner + np.clip(shift, -0.5, 0.5)).astype(np.float32)


def disparity(left: npt.NDArray[np.uint8], right: npt.NDArray[np.uint8], max_d: int = 48,
              radius: int = 3, tolerance: float = 1.0) -> F32:  # fmt: skip
    """The left image's disparity per pixel; -1 where the match is not consistent.

    Args:
        left: the left image (rows x columns, grey levels).
        right: the right image, same shape, rectified.
        max_d: disparities tried are 0 .. max_d - 1.
        radius: the matching window is (2 radius + 1) pixels square.
        tolerance: how far (pixels) the right-to-left match may disagree.
    """
    left_f, right_f = left.astype(np.float32), right.astype(np.float32)
    from_left = _costs(left_f, right_f, max_d, radius, -1)
    best_left = from_left.argmin(axis=0)
    best_right = _costs(right_f, left_f, max_d, radius, +1).argmin(axis=0)
    columns = np.arange(left.shape[1])[None, :]
    back = np.take_along_axis(best_right, np.clip(columns - best_left, 0, left.shape[1] - 1), 1)
    consistent = np.abs(back - best_left) <= tolerance
    return np.where(consistent, _subpixel(from_left, best_left), -1.0).astype(np.float32)
