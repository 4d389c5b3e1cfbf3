"""What a checkpoint costs on the broker: the time to store one, and to read it back.

Starts RabbitMQ with the same helper the tests use and, in a scratch vhost, saves states
of 1 KiB, 1 MiB and 8 MiB (the bound) through a worker's ``CheckpointStore`` one after
another, each awaited until the broker confirmed it (``save`` then ``load``, which waits for
the save under way), then reads each back (``load``: a ``basic.get`` and a requeue). First,
the load a call makes when it starts and has never saved (it declares and binds its queue).
A task that saves every ``checkpoint_s`` spends this time in the worker's event loop, not in
its own thread: saving does not hold the task up.

Usage: python bench/checkpoints.py [--rounds 100]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import summary
from bus.connection import Bus
from bus.sdk.checkpoints import MAX_CHECKPOINT_BYTES, CheckpointStore, encode_state
from bus.topology import declare_app, declare_platform
from idlecloud.dev.services import scratch_vhost

NAMESPACE = "bench"
SIZES = {"1KiB": 1024, "1MiB": 1024**2, "8MiB": MAX_CHECKPOINT_BYTES}


async def main(url: str, rounds: int) -> None:
    async with Bus(url, connection_name="bench checkpoints") as bus:
        await declare_platform(bus)
        channel = await bus.channel()
        await declare_app(channel, NAMESPACE, "work")
        store = CheckpointStore(bus, NAMESPACE)
        await store.start()
        empty_ms = []
        for index in range(rounds):
            started = time.perf_counter()
            await store.load(f"never-{index}")
            empty_ms.append((time.perf_counter() - started) * 1000)
            await store.drop(f"never-{index}")
        print("\n".join(summary("first_load_declares_the_queue", empty_ms)))
        for label, size in SIZES.items():
            state = encode_state(b"\x01" * size)
            save_ms, load_ms = [], []
            count = rounds if size < MAX_CHECKPOINT_BYTES else max(10, rounds // 10)
            for index in range(count):
                started = time.perf_counter()
                store.save_soon(f"{label}-{index}", state)
                await store.load(f"{label}-{index}")  # waits for the save, then reads
                save_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                loaded = await store.load(f"{label}-{index}")
                load_ms.append((time.perf_counter() - started) * 1000)
                assert loaded is not None and len(loaded.body) == size
                await store.drop(f"{label}-{index}")
            print("\n".join(summary(f"save_and_load_{label}", save_ms)))
            print("\n".join(summary(f"load_{label}", load_ms)))
        await store.stop()
        await channel.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="saves per size (8 MiB: /10)")
    arguments = parser.parse_args()
    with scratch_vhost("bench") as broker:
        asyncio.run(main(broker.url, arguments.rounds))
