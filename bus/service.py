"""Running services: one connection, graceful stop on SIGTERM/SIGINT, logging set up once.

:func:`serve` connects, declares the platform topology, starts each service, and waits for
SIGTERM or SIGINT. It then stops the services in reverse order, each finishing its
in-flight messages within the grace period (what does not finish is requeued, never lost),
and closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from bus.abc import Service
from bus.connection import Bus, cancelled_from_below
from bus.topology import declare_platform

__all__ = ["configure_logging", "run", "serve", "supervised"]

log = logging.getLogger(__name__)
_configured = False


def configure_logging(default_level: str = "INFO") -> None:
    """Configure the root logger once: the level ``IDLECLOUD_LOG_LEVEL`` names, else
    ``default_level``."""
    global _configured
    if _configured:
        return
    _configured = True
    logging.basicConfig(
        level=os.environ.get("IDLECLOUD_LOG_LEVEL", default_level).upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)


async def supervised(
    name: str,
    duty: Callable[[], Awaitable[None]],
    *,
    first_backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
) -> None:
    """Run a background duty forever: if it raises, log it and start it again after a
    backoff (doubling from ``first_backoff_s`` to ``max_backoff_s``; reset once it has run
    for ``max_backoff_s``). Cancelling this cancels the duty; a ``CancelledError`` that is
    not this task's own cancellation (aiormq fails what awaited a connection it dropped as
    stuck with one) is a failure like any other: it had ended the agent's heartbeats."""
    backoff_s = first_backoff_s
    while True:
        started = asyncio.get_running_loop().time()
        try:
            await duty()
        except asyncio.CancelledError:
            if not cancelled_from_below():
                raise
            log.exception("%s was cancelled from below; restarting in %g s", name, backoff_s)
        except Exception:
            log.exception("%s failed; restarting in %g s", name, backoff_s)
        else:
            log.warning("%s ended; restarting in %g s", name, backoff_s)
        if asyncio.get_running_loop().time() - started >= max_backoff_s:
            backoff_s = first_backoff_s
        await asyncio.sleep(backoff_s)
        backoff_s = min(max_backoff_s, backoff_s * 2)


async def serve(
    url: str,
    services: Sequence[Service],
    *,
    name: str = "idlecloud",
    grace_s: float = 30.0,
    stop: asyncio.Event | None = None,
    declare: bool = True,
    on_started: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run services until SIGTERM/SIGINT (or ``stop`` is set), then stop them gracefully.

    Args:
        url: the broker URL.
        services: started in order, stopped in reverse.
        name: the connection name the broker shows.
        grace_s: how long in-flight work may take to finish after the stop signal.
        stop: an event that stops the services when set (for embedding and tests).
        declare: declare the platform's topology first (the platform's own services); a
            PC or a user holding scopes may not, and relies on the platform having done it.
        on_started: run (in the background) once every service has started.

    Raises:
        BrokerUnavailable: the broker cannot be reached at start.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Bus(url, connection_name=name) as bus:
            if declare:  # a credential with scopes may not; the platform has declared it
                await declare_platform(bus)
            for service in services:
                await service.start(bus)
                log.info("started %s", service.name)
            started = None if on_started is None else asyncio.create_task(on_started())
            await stop.wait()
            if started is not None:
                started.cancel()
            log.info("stopping (grace %g s)", grace_s)
            for service in reversed(services):
                await service.stop(grace_s)
                log.info("stopped %s", service.name)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def run(
    url: str,
    services: Sequence[Service],
    *,
    name: str = "idlecloud",
    grace_s: float = 30.0,
    declare: bool = True,
    on_started: Callable[[], Coroutine[Any, Any, None]] | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> None:
    """Configure logging and :func:`serve` the services until a stop signal, on a loop
    ``loop_factory`` makes (asyncio's own by default)."""
    configure_logging()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(url, services, name=name, grace_s=grace_s, declare=declare,
                         on_started=on_started))  # fmt: skip
