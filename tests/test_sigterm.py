"""SIGTERM while a real service process is handling messages: none is ever lost.

With a grace period longer than the work, in-flight messages complete (their results are
published) before the process exits; with a shorter one, they go back to the queue and are
delivered again to the next consumer.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiormq
import pytest

from bus import names
from bus.connection import Bus
from idlecloud.dev.services import BrokerInfo
from schemas import DeployRequest, RequestResult

from .examples import deploy
from .helpers import collect_events, wait_until

ROOT = Path(__file__).resolve().parent.parent
IN_FLIGHT = 3


async def _run_and_terminate(
    broker: BrokerInfo, bus: Bus, unique: str, delay_s: float, grace_s: float
) -> tuple[list[str], str]:
    """Start the service, give it 3 requests, SIGTERM it mid-handling; return results and queue."""
    namespace, queue = f"t{unique}", names.service_queue(f"sigterm-{unique}", "requests")
    results = await collect_events(
        bus,
        f"ns.{namespace}.result",
        lambda m: RequestResult.model_validate_json(m.body).request_id,
    )

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.programs.slow_service",
        broker.url, queue, namespace, str(delay_s), str(grace_s),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        # The queue exists once the service started consuming; then send the work.
        await _wait_for_queue(bus, queue)
        for index in range(IN_FLIGHT):
            await bus.publish(deploy(namespace, "a", f"req-{index:06d}"))
        started = 0
        while started < IN_FLIGHT:
            line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
            started += line.startswith(b"handling")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=grace_s + 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return results, queue


async def _wait_for_queue(bus: Bus, queue: str) -> None:
    for _ in range(300):
        channel = await bus.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            if declared.declaration_result.consumer_count:
                await channel.close()
                return
        except aiormq.exceptions.ChannelNotFoundEntity:
            pass  # not declared yet
        if not channel.is_closed:
            await channel.close()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{queue} never got a consumer")


@pytest.mark.slow
async def test_in_flight_work_completes_within_the_grace_period(
    broker: BrokerInfo, bus: Bus, unique: str
) -> None:
    results, queue = await _run_and_terminate(broker, bus, unique, delay_s=1.5, grace_s=20)
    await wait_until(lambda: len(results) == IN_FLIGHT, what="every result")
    assert sorted(results) == [f"req-{i:06d}" for i in range(IN_FLIGHT)]
    channel = await bus.channel()
    declared = await channel.declare_queue(queue, passive=True)
    assert declared.declaration_result.message_count == 0


@pytest.mark.slow
async def test_work_past_the_grace_period_is_requeued_not_lost(
    broker: BrokerInfo, bus: Bus, unique: str
) -> None:
    results, queue = await _run_and_terminate(broker, bus, unique, delay_s=60, grace_s=0.5)
    assert results == []
    channel = await bus.channel()
    requeued = await channel.declare_queue(queue, passive=True)
    redelivered: list[tuple[str, bool]] = []
    for _ in range(IN_FLIGHT):
        message = await requeued.get(timeout=5)
        request = DeployRequest.model_validate_json(message.body)
        redelivered.append((request.request_id, message.redelivered))
        await message.ack()
    assert sorted(redelivered) == [(f"req-{i:06d}", True) for i in range(IN_FLIGHT)]
