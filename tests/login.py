"""Broker tokens for tests: a session signing key the broker trusts, and connections as
any principal (user, PC, replica, admin) on the session's vhost."""

from __future__ import annotations

import pytest

from bus.connection import Bus
from bus.devservices import RESOURCE_SERVER_ID, BrokerInfo, add_signing_key
from bus.scopes import RoleName
from services.auth.tokens import SigningKey, broker_token

__all__ = ["Login", "login", "signing_key"]


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    """This session's signing key, trusted by the broker."""
    key = SigningKey.generate()
    add_signing_key(key.kid, key.public_pem)
    return key


class Login:
    """Mints tokens for one vhost and opens connections with them."""

    def __init__(self, broker: BrokerInfo, key: SigningKey) -> None:
        self.broker = broker
        self.key = key

    def url(self, token: str, user: str = "key") -> str:
        return f"amqp://{user}:{token}@127.0.0.1:5672/{self.broker.vhost}"

    def token(self, role: RoleName, subject: str, app: str = "") -> str:
        token, _expiry = broker_token(self.key, RESOURCE_SERVER_ID, role, subject,
                                      self.broker.vhost, key_id="k" * 16, app=app)  # fmt: skip
        return token

    async def connect(self, role: RoleName, subject: str, app: str = "") -> Bus:
        return await Bus(self.url(self.token(role, subject, app))).connect()


@pytest.fixture
async def login(broker: BrokerInfo, signing_key: SigningKey) -> Login:
    """Connections as any principal on the session's vhost."""
    return Login(broker, signing_key)
