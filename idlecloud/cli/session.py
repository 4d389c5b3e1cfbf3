"""How a `bus` command talks to the platform: as the development user, or with an API key.

With ``IDLECLOUD_API_KEY`` (or ``IDLECLOUD_API_KEY_FILE``) set, the command trades the key
for a broker token at ``IDLECLOUD_AUTH_URL`` and connects as that key; otherwise it uses
the credentials in ``--url`` (the local development broker by default).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from bus.connection import Bus
from bus.credentials import key_holder
from bus.rpc import RpcClient
from idlecloud.cli._common import run_async
from schemas import Message, Owner

__all__ = ["ask", "asking", "connect"]

R = TypeVar("R", bound=Message)
T = TypeVar("T")


@asynccontextmanager
async def connect(url: str, purpose: str) -> AsyncIterator[Bus]:
    """A connection for one command, authenticated by the API key if there is one."""
    url, name, _refresher = await key_holder(url, f"bus {purpose}")  # short-lived: no refresh
    async with Bus(url, connection_name=name) as bus:
        yield bus


async def _as(url: str, owner: Owner, purpose: str, use: Callable[[RpcClient], Awaitable[T]]) -> T:
    async with connect(url, purpose) as bus:
        client = await RpcClient(bus, owner).start()
        try:
            return await use(client)
        finally:
            await client.stop()


def ask(url: str, owner: Owner, request: Message, expect: type[R]) -> R:
    """Send one RPC request as ``owner`` and return the reply (errors end the command)."""
    return asking(url, owner, request.schema_name,
                  lambda client: client.call(request, expect, timeout_s=15.0))  # fmt: skip


def asking(url: str, owner: Owner, purpose: str, use: Callable[[RpcClient], Awaitable[T]]) -> T:
    """Run ``use`` with an RPC client speaking as ``owner`` (errors end the command)."""
    return run_async(lambda: _as(url, owner, purpose, use))
