"""Each caller's requests travel on a broker connection of the caller's own.

The gateway speaks for people who prefer HTTP, but it does not vouch for them: it trades
the caller's API key for a broker token at the auth service, like any client, and sends
the caller's requests on a connection opened with that token. The broker then names the
caller as the sender (``user_id`` ``user:alice:<key id>``), checks the caller's own
scopes, and forgets the token's key at a revocation like any other's: a request through
the gateway carries exactly the power the caller's key has, and the gateway adds none.

Connections are kept per API key (at most ``limit``, the least recently used closed
first) until a minute before their token expires, and closed as soon as the journal
says their key was revoked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from bus.connection import Bus
from bus.credentials import fetch_broker_token, url_with_token
from bus.rpc import RpcClient
from schemas import Message, Owner

__all__ = ["Relays"]

R = TypeVar("R", bound=Message)
#: A relay is replaced this long before its token expires.
_RENEW_BEFORE_S = 60.0


@dataclass
class _Relay:
    """One caller's connection and its reply queues (one per owner it speaks for)."""

    bus: Bus
    expires_at: float
    clients: dict[Owner, RpcClient] = field(default_factory=dict)
    starting: asyncio.Lock = field(default_factory=asyncio.Lock)  # one reply queue per owner

    async def client(self, owner: Owner) -> RpcClient:
        """The RPC client that speaks for ``owner`` on this connection (started once)."""
        async with self.starting:
            if owner not in self.clients:
                self.clients[owner] = await RpcClient(self.bus, owner).start()
            return self.clients[owner]

    async def close(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.stop()
        await self.bus.close()


class Relays:
    """The callers' own connections; see the module's header.

    Each key's relay is opened, renewed and dropped under a lock of that key's alone, so
    a slow token trade or connect for one caller never holds up another's requests.
    """

    def __init__(
        self, broker_url: str, auth_url: str, ca_file: Path | None = None, limit: int = 256
    ) -> None:
        self.broker_url = broker_url
        self.auth_url = auth_url
        self.ca_file = ca_file
        self.limit = limit
        self._relays: OrderedDict[str, _Relay] = OrderedDict()
        #: A lock per key while anyone uses it (gone with its last user).
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, key_id: str) -> asyncio.Lock:
        lock = self._locks.get(key_id)
        if lock is None:
            lock = self._locks[key_id] = asyncio.Lock()
        return lock

    async def call(
        self, key_id: str, api_key: str, message: Message, expect: type[R], timeout_s: float
    ) -> R:
        """Send ``message`` by RPC on the connection of ``api_key`` (its id ``key_id``).

        Raises:
            CredentialsRefused: the auth service refused the key (revoked meanwhile).
            AuthUnavailable: the auth service cannot be reached.
            BusError: the broker refused or the control plane did not answer.
        """
        relay = await self._relay(key_id, api_key)
        client = await relay.client(message.owner())
        return await client.call(message, expect, timeout_s=timeout_s)

    async def connection(self, key_id: str, api_key: str) -> Bus:
        """The connection of ``api_key``: to publish and read as the caller.

        Raises:
            CredentialsRefused: the auth service refused the key (revoked meanwhile).
            AuthUnavailable: the auth service cannot be reached.
        """
        return (await self._relay(key_id, api_key)).bus

    async def _relay(self, key_id: str, api_key: str) -> _Relay:
        evicted: list[_Relay] = []
        async with self._lock(key_id):
            relay = self._relays.get(key_id)
            if relay is not None and relay.expires_at - _RENEW_BEFORE_S > time.time():
                self._relays.move_to_end(key_id)
                return relay
            if relay is not None:
                del self._relays[key_id]
                evicted.append(relay)
            token = await fetch_broker_token(api_key, self.auth_url, self.ca_file)
            url = url_with_token(self.broker_url, token)
            name = f"gateway for {token.role} {token.subject}"
            bus = await Bus(url, connection_name=name).connect()
            relay = self._relays[key_id] = _Relay(bus, token.expires_at)
            while len(self._relays) > self.limit:
                evicted.append(self._relays.popitem(last=False)[1])
        for old in evicted:
            await old.close()
        return relay

    async def drop(self, key_id: str) -> None:
        """Close the connection of a revoked key (if the gateway holds one; after one being
        opened for it now)."""
        async with self._lock(key_id):
            relay = self._relays.pop(key_id, None)
        if relay is not None:
            await relay.close()

    async def close(self) -> None:
        """Close every connection."""
        relays, self._relays = list(self._relays.values()), OrderedDict()
        for relay in relays:
            await relay.close()
