"""The stereo worker: one task, a strip of a stereo pair in, its disparity map out.

A stateless service in the thesis's sense: everything a task needs travels in its
message, and nothing stays behind on the worker. Inputs and results are ``.npz``
archives (numpy arrays, loaded with ``allow_pickle=False``), sent as raw bytes.

Serve it:   bus worker examples.stereo.tasks:app      (namespace: IDLECLOUD_NAMESPACE)
"""

from __future__ import annotations

import io
import os
import time

import numpy as np

from bus.sdk import App
from examples.stereo.matching import disparity

__all__ = ["app", "match_strip", "pack", "unpack"]

app = App(os.environ.get("IDLECLOUD_NAMESPACE") or "demo", "stereo")


def pack(**arrays: np.ndarray | int | float) -> bytes:
    """An ``.npz`` archive of the given arrays and scalars."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    return buffer.getvalue()


def unpack(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive made by :func:`pack` (no pickles accepted)."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


@app.task(executor="thread", retries=2, timeout_s=120)
def match_strip(blob: bytes) -> bytes:
    """Match one strip: ``left``, ``right`` (rows with a margin above and below),
    ``max_d``, ``radius``, ``top`` and ``rows`` (the strip within them); returns its
    ``disparity`` (16ths of a pixel, -16 where unknown) and the ``cpu_s`` it took."""
    started = time.thread_time()
    strip = unpack(blob)
    top, rows = int(strip["top"]), int(strip["rows"])
    found = disparity(strip["left"], strip["right"], int(strip["max_d"]), int(strip["radius"]))
    fixed = np.rint(found[top : top + rows] * 16).astype(np.int16)
    return pack(disparity=fixed, cpu_s=time.thread_time() - started)
