"""Replicas' broker tokens: fetched from the auth service, renewed at half their lifetime.

The placement leader asks the auth service (RPC ``ReplicaTokenRequest``) for a token when
it starts a replica, and puts it in the ``StartReplica``; the agent writes it into the
file the replica reads. Each tick it renews every live replica's token that has reached
half its lifetime, or that it has never seen (started by a previous leader), with a
``RenewToken`` through the agent.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from bus.rpc import RpcClient
from schemas import ReplicaTokenReply, ReplicaTokenRequest

__all__ = ["ReplicaTokens"]


class ReplicaTokens:
    """Fetches replicas' tokens and knows which are due for renewal; see the header."""

    def __init__(self, client: RpcClient, *, timeout_s: float = 10.0) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._renew_at: dict[str, float] = {}  # replica id -> wall-clock time to renew

    async def fetch(self, namespace: str, app: str, replica_id: str) -> str:
        """A new token for the replica.

        Raises:
            BusError: the auth service did not answer (RpcTimeout) or is not there
                (Unroutable).
        """
        request = ReplicaTokenRequest(namespace=namespace, app=app, replica_id=replica_id)
        reply = await self._client.call(request, ReplicaTokenReply, timeout_s=self._timeout_s)
        now = time.time()
        self._renew_at[replica_id] = now + (reply.expires_at.timestamp() - now) / 2
        return reply.token

    def due(self, replica_ids: Iterable[str]) -> list[str]:
        """Which of these live replicas need a new token now (forgetting the others)."""
        live = set(replica_ids)
        for gone in set(self._renew_at) - live:
            del self._renew_at[gone]
        now = time.time()
        return sorted(rid for rid in live if self._renew_at.get(rid, 0.0) <= now)

    async def stop(self) -> None:
        """Close the RPC client."""
        await self._client.stop()
