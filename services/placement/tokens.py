"""Replicas' broker tokens: fetched from the auth service, renewed at half their lifetime.

The placement leader asks the auth service (RPC ``ReplicaTokenRequest``) for a token when
it starts a replica, and puts it in the ``StartReplica``; the agent writes it into the
file the replica reads. Each tick it renews every live replica's token that has reached
half its lifetime, or that it has never seen (started by a previous leader), with a
``RenewToken`` through the agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

from bus.errors import BusError
from bus.rpc import RpcClient
from schemas import REPLICA_TOKENS_MAX, ReplicaRef, ReplicaTokenReply, ReplicaTokenRequest

__all__ = ["ReplicaTokens"]

log = logging.getLogger(__name__)


class ReplicaTokens:
    """Fetches replicas' tokens and knows which are due for renewal; see the header."""

    def __init__(self, client: RpcClient, *, timeout_s: float = 10.0) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._renew_at: dict[str, float] = {}  # replica id -> wall-clock time to renew

    async def fetch(self, replicas: Sequence[ReplicaRef]) -> dict[str, str]:
        """New tokens for these replicas, by replica id, asked for
        :data:`~schemas.REPLICA_TOKENS_MAX` at a time, all at once. A replica whose request
        the auth service did not answer (or is not there to) has none; that is logged."""
        chunks = [replicas[i : i + REPLICA_TOKENS_MAX]
                  for i in range(0, len(replicas), REPLICA_TOKENS_MAX)]  # fmt: skip
        replies = await asyncio.gather(*(self._ask(chunk) for chunk in chunks))
        now = time.time()
        tokens: dict[str, str] = {}
        for reply in replies:
            for token in reply.tokens if reply is not None else ():
                tokens[token.replica_id] = token.token
                self._renew_at[token.replica_id] = now + (token.expires_at.timestamp() - now) / 2
        return tokens

    async def _ask(self, chunk: Sequence[ReplicaRef]) -> ReplicaTokenReply | None:
        request = ReplicaTokenRequest(replicas=tuple(chunk))
        try:
            return await self._client.call(request, ReplicaTokenReply, timeout_s=self._timeout_s)
        except BusError as error:
            log.warning("placement: no tokens for %d replicas (%s); retrying", len(chunk), error)
            return None

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
