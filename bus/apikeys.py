"""What an API key says, and how anyone with the auth service's public key reads one.

An API key is a long-lived JWT (audience :data:`API_KEY_AUDIENCE`) naming a role, a
subject (a namespace, a PC or an admin), a name and, for a user, limits; its ``jti`` is
the key id, by which it is listed and revoked. The auth service mints them
(:mod:`services.auth.tokens`) signed RS256 with its private key; the auth service and the
gateway read them with the public half. Tokens with any other algorithm (``none``
included) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jwt

__all__ = [
    "ALGORITHM",
    "API_KEY_AUDIENCE",
    "ISSUER",
    "ApiKey",
    "InvalidKey",
    "KeyRole",
    "bearer_credential",
    "read_api_key",
]

ISSUER = "idlecloud"
API_KEY_AUDIENCE = "idlecloud-auth"
#: The one algorithm an API key is signed with.
ALGORITHM = "RS256"
#: The roles an API key may have (replicas get broker tokens only, never a key).
KeyRole = Literal["user", "node", "admin"]


class InvalidKey(ValueError):
    """An API key or token was refused; the message says why (never the token itself)."""


@dataclass(frozen=True)
class ApiKey:
    """What an API key says about its holder."""

    key_id: str
    role: KeyRole
    subject: str
    name: str
    expires_at: int
    cpu_millicores: int | None = None
    memory_mib: int | None = None


def bearer_credential(header: str, what: str = "the API key") -> str:
    """The credential of an ``Authorization: Bearer <it>`` header.

    Raises:
        InvalidKey: the header is missing or of another scheme; the message names ``what``.
    """
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise InvalidKey(f"send {what} as `Authorization: Bearer <key>`")
    return credential


def read_api_key(token: str, public_pem: bytes) -> ApiKey:
    """Check an API key's signature, audience, issuer and expiry; what it says.

    Raises:
        InvalidKey: forged, expired, of another audience, or not an API key at all.
    """
    try:
        claims = jwt.decode(
            token, public_pem, algorithms=[ALGORITHM], audience=API_KEY_AUDIENCE,
            issuer=ISSUER, options={"require": ["exp", "jti", "sub", "aud", "iss"]},
        )  # fmt: skip
    except jwt.ExpiredSignatureError:
        raise InvalidKey("the API key has expired; ask an admin for a new one") from None
    except jwt.PyJWTError as error:
        raise InvalidKey(f"not a valid API key: {error}") from None
    role = claims.get("role")
    if role not in ("user", "node", "admin"):
        raise InvalidKey(f"not a valid API key: unknown role {role!r}")
    limits = claims.get("limits") or {}
    return ApiKey(
        claims["jti"], role, claims["sub"], str(claims.get("name", "")), int(claims["exp"]),
        limits.get("cpu_millicores"), limits.get("memory_mib"),
    )  # fmt: skip
