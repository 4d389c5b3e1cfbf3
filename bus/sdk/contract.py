"""The container contract: what a replica started by the platform finds in its environment.

``IDLECLOUD_URL`` (the broker), ``IDLECLOUD_NAMESPACE``, ``IDLECLOUD_APP`` and
``IDLECLOUD_TOKEN_FILE`` (a file holding the replica's broker token, which the platform
rewrites before the token expires); ``IDLECLOUD_STATUS_FILE`` (where the worker says since
when its running calls hold unsaved work: :mod:`bus.sdk.status`); on a site with a data
root, ``IDLECLOUD_DATA`` (its namespace's data folder, read-write:
:mod:`nodeagent.runtime.data`). Outside the
platform the same variables, or the matching flags of `bus worker`, let a researcher run a
worker on her own machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from bus import addresses
from bus.connection import Bus, unverified_claims

__all__ = ["TokenFile", "broker_url_with_token", "read_token", "token_expiry"]

log = logging.getLogger(__name__)


def read_token(token_file: str) -> str:
    """The token in ``token_file``, stripped.

    Raises:
        ValueError: the file is missing, unreadable or empty.
    """
    try:
        token = Path(token_file).read_text().strip()
    except OSError as error:
        raise ValueError(f"cannot read the token file {token_file}: {error.strerror}") from None
    if not token:
        raise ValueError(f"the token file {token_file} is empty")
    return token


def broker_url_with_token(url: str, token_file: str | None) -> str:
    """``url`` (every node of it) with the token from ``token_file`` as its password
    (unchanged without one)."""
    if not token_file:
        return url
    token = read_token(token_file)
    return addresses.each(
        url, lambda node: node.with_user(node.user or "idlecloud").with_password(token)
    )


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT as a Unix time, or None for anything else.

    The signature is not checked: the broker does that. This only decides when to
    re-read the token file.
    """
    expiry = (unverified_claims(token) or {}).get("exp")
    return float(expiry) if isinstance(expiry, int | float) else None


class TokenFile:
    """Keeps a connection's secret equal to the token in a file the platform rewrites.

    The file is re-read at half the token's remaining lifetime (a JWT) or every
    ``check_s`` seconds, whichever comes first; a new token is swapped into the open
    connection with AMQP ``update-secret``. When the connection drops, the file is read
    again so the reconnect presents the newest token.
    """

    name = "token-file"

    def __init__(self, path: str, *, check_s: float = 30.0) -> None:
        self.path = path
        self.check_s = check_s
        self.current = read_token(path)
        self._bus: Bus | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, bus: Bus) -> None:
        """Watch the file for ``bus``'s connection."""
        self._bus = bus
        bus.connection.close_callbacks.add(self._on_close)
        self._task = asyncio.create_task(self._watch())

    async def stop(self, grace_s: float) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def next_check_s(self, now: float | None = None) -> float:
        """Seconds until the file should be read again."""
        expiry = token_expiry(self.current)
        if expiry is None:
            return self.check_s
        remaining_s = expiry - (time.time() if now is None else now)
        return max(1.0, min(self.check_s, remaining_s / 2))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.next_check_s())
            try:
                await self.refresh()
            except ValueError as error:
                log.warning("%s; keeping the current token", error)

    async def refresh(self) -> bool:
        """Read the file; swap a new token into the connection. True if it changed.

        Raises:
            ValueError: the file is missing or empty.
        """
        token = read_token(self.path)
        if token == self.current or self._bus is None:
            return False
        self.current = token
        await self._bus.update_secret(token)
        log.info("broker token renewed from %s", self.path)
        return True

    def _on_close(self, *_: object) -> None:
        if self._bus is None:
            return
        with contextlib.suppress(ValueError):
            self.current = read_token(self.path)
            self._bus.use_secret_on_reconnect(self.current)
