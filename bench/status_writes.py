"""What telling the agent about unsaved work costs a worker per message.

A replica's worker marks each call started and ended (``bus.sdk.status.UnsavedWork``),
so that a frozen replica's status file says what an eviction would throw away. Writing
the file at every change costs two atomic file writes a message; writing new unsaved work
only once it is ``SETTLE_S`` old costs none for calls shorter than that. Both run here in
one process on the same folder, inside an event loop as in a worker: ``--messages``
trivial calls (started, then ended), and the time each took.

Usage: python bench/status_writes.py [--messages 5000]
Prints `every_change_us_per_message`, `settled_us_per_message` and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bus.sdk.status import SETTLE_S, UnsavedWork  # noqa: E402


def _at_once(_delay_s: float, callback: Callable[[], None]) -> None:
    callback()


async def _per_message_us(work: UnsavedWork, messages: int) -> float:
    started = time.perf_counter()
    for index in range(messages):
        work.started(str(index))
        work.ended(str(index))
        if index % 100 == 0:
            await asyncio.sleep(0)  # the loop turns, as between a worker's messages
    return (time.perf_counter() - started) / messages * 1e6


async def main(messages: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="status-bench-"))
    try:
        every = await _per_message_us(UnsavedWork(folder / "a", later=_at_once), messages)
        settled = await _per_message_us(UnsavedWork(folder / "b"), messages)
    finally:
        shutil.rmtree(folder)
    print(f"messages: {messages} each way, trivial calls, settle {SETTLE_S:g} s")
    print(f"every_change_us_per_message: {every:.1f}")
    print(f"settled_us_per_message: {settled:.1f}")
    print(f"every_change_over_settled: {every / settled:.0f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    asyncio.run(main(parser.parse_args().messages))
