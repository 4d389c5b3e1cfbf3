"""Broker tokens for tests: a session signing key whose broker keys the broker trusts, and
connections as any principal (user, PC, replica, admin) on the session's vhost."""

from __future__ import annotations

import asyncio

import pytest

from bus.connection import Bus
from bus.scopes import RoleName
from bus.topology import declare_door, declare_namespace
from idlecloud.dev.services import RESOURCE_SERVER_ID, BrokerInfo
from schemas import Owner
from services.auth.keyring import Keyring
from services.auth.tokens import REPLICAS, SigningKey, broker_token

__all__ = ["KEY_ID", "Login", "login", "signing_key"]

#: The key id of every token a :class:`Login` mints.
KEY_ID = "k" * 16


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    """This session's signing key; the broker trusts the broker keys of its tokens."""
    key = SigningKey.generate()
    asyncio.run(Keyring().change(trust=[key.broker_key(KEY_ID), key.broker_key(REPLICAS)]))
    return key


class Login:
    """Mints tokens for one vhost and opens connections with them."""

    def __init__(self, broker: BrokerInfo, key: SigningKey) -> None:
        self.broker = broker
        self.key = key

    def url(self, token: str, user: str = "key") -> str:
        return f"amqp://{user}:{token}@127.0.0.1:5672/{self.broker.vhost}"

    def token(self, role: RoleName, subject: str, app: str = "", key_id: str = KEY_ID) -> str:
        token, _expiry = broker_token(self.key, RESOURCE_SERVER_ID, role, subject,
                                      self.broker.vhost, key_id=key_id, app=app)  # fmt: skip
        return token

    async def open_door(self, role: RoleName, subject: str) -> None:
        """Do what the auth service does when a user's or a PC's key is traded: declare
        the holder's door (as the platform)."""
        async with Bus(self.broker.url) as platform:
            channel = await platform.channel()
            if role == "user":
                await declare_namespace(channel, subject)
            elif role == "node":
                await declare_door(channel, Owner.node(subject))
            await channel.close()

    async def connect(self, role: RoleName, subject: str, app: str = "") -> Bus:
        await self.open_door(role, subject)
        return await Bus(self.url(self.token(role, subject, app))).connect()


@pytest.fixture
async def login(broker: BrokerInfo, signing_key: SigningKey) -> Login:
    """Connections as any principal on the session's vhost."""
    return Login(broker, signing_key)
