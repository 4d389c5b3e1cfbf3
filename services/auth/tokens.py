"""Keys and tokens: the signing key, minting API keys, and the broker tokens RabbitMQ checks.

An **API key** (:mod:`bus.apikeys`: what it says, and how it is read) is signed RS256
with the one private key only the auth service holds; everyone may see its public half.

A **broker token** is a short-lived JWT (at most :data:`MAX_BROKER_TOKEN_S`) with the
broker's audience, the role's scopes (:func:`bus.scopes.scopes_for`) and, as ``sub``, its
holder's principal (``user:alice:<key id>``, :class:`bus.trust.Principal`), which the
broker makes the connection's user name. It is signed HS256 with a **broker key of its
own API key** (:meth:`SigningKey.broker_key`: a secret derived from the private key and
the key id, so no instance keeps extra state); replicas' tokens share one broker key. The
broker trusts exactly the broker keys of live API keys (:mod:`services.auth.keyring`):
revoking a key removes its broker key, after which no token minted for it, before or
after, opens a connection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bus.apikeys import ALGORITHM, API_KEY_AUDIENCE, ISSUER, ApiKey, KeyRole
from bus.scopes import RoleName, scopes_for
from bus.tls import write_private
from bus.trust import Principal

__all__ = [
    "MAX_BROKER_TOKEN_S",
    "REPLICAS",
    "BrokerKey",
    "SigningKey",
    "broker_token",
    "mint_api_key",
]

MAX_BROKER_TOKEN_S = 600
#: The broker key every replica's tokens share (no API key has this id).
REPLICAS = "replicas"
_BROKER_ALGORITHM = "HS256"


@dataclass(frozen=True)
class BrokerKey:
    """A key the broker checks broker tokens with: its id (``kid``) and HMAC secret."""

    kid: str
    secret: bytes

    def jwk(self) -> str:
        """The key as the JSON Web Key RabbitMQ's OAuth 2 backend reads."""
        k = base64.urlsafe_b64encode(self.secret).rstrip(b"=").decode()
        return json.dumps({"kty": "oct", "alg": _BROKER_ALGORITHM, "k": k}, separators=(",", ":"))


@dataclass(frozen=True)
class SigningKey:
    """The auth service's RSA key: its id (``kid``) and private half."""

    kid: str
    private_pem: bytes

    @classmethod
    def generate(cls, kid: str | None = None) -> SigningKey:
        """A new 2048-bit RSA key."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cls(kid or f"idlecloud-{uuid.uuid4().hex[:8]}", pem)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Read a key written by :meth:`save` (its id is the file's stem).

        Raises:
            OSError: it cannot be read.
        """
        return cls(path.stem, path.read_bytes())

    def save(self, folder: Path) -> tuple[Path, Path]:
        """Write ``<kid>.pem`` (private, mode 0600) and ``<kid>.pub.pem``; their paths."""
        folder.mkdir(parents=True, exist_ok=True)
        private, public = folder / f"{self.kid}.pem", folder / f"{self.kid}.pub.pem"
        write_private(private, self.private_pem)
        public.write_bytes(self.public_pem)
        return private, public

    @property
    def public_pem(self) -> bytes:
        """The public half, for the broker and the services that check API keys."""
        key = serialization.load_pem_private_key(self.private_pem, password=None)
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any]) -> str:
        """A JWT of ``claims`` signed with this key."""
        return jwt.encode(claims, self.private_pem, algorithm=ALGORITHM, headers={"kid": self.kid})

    def broker_key(self, key_id: str) -> BrokerKey:
        """The broker key of an API key's tokens (:data:`REPLICAS`: every replica's)."""
        kid = f"{self.kid}.{key_id}"
        root = hashlib.sha256(b"idlecloud broker keys\0" + self.private_pem).digest()
        return BrokerKey(kid, hmac.new(root, kid.encode(), hashlib.sha256).digest())


def mint_api_key(
    key: SigningKey,
    role: KeyRole,
    subject: str,
    *,
    name: str = "",
    ttl_s: int = 365 * 86_400,
    limits: tuple[int, int] | None = None,
    now: float | None = None,
) -> tuple[ApiKey, str]:
    """A new API key: what it says, and the key itself (a JWT to hand to its holder)."""
    issued = int(now if now is not None else time.time())
    api_key = ApiKey(uuid.uuid4().hex[:16], role, subject, name, issued + ttl_s,
                     *(limits or (None, None)))  # fmt: skip
    claims: dict[str, Any] = {
        "iss": ISSUER, "aud": API_KEY_AUDIENCE, "sub": subject, "role": role, "name": name,
        "iat": issued, "exp": api_key.expires_at, "jti": api_key.key_id,
    }  # fmt: skip
    if limits is not None:
        claims["limits"] = {"cpu_millicores": limits[0], "memory_mib": limits[1]}
    return api_key, key.sign(claims)


def broker_token(
    key: SigningKey,
    resource_server_id: str,
    role: RoleName,
    subject: str,
    vhost: str,
    *,
    key_id: str,
    app: str = "",
    ttl_s: int = MAX_BROKER_TOKEN_S,
    now: float | None = None,
) -> tuple[str, int]:
    """A broker token for one credential's scopes; the token and its expiry (Unix time).

    It is signed with the broker key of ``key_id`` (for a replica: its id, and the
    replicas' broker key), which the broker must trust (:mod:`services.auth.keyring`).

    Raises:
        ValueError: ``ttl_s`` above :data:`MAX_BROKER_TOKEN_S`, a replica without an app, or
            a subject or key id that cannot name a principal.
    """
    if not 0 < ttl_s <= MAX_BROKER_TOKEN_S:
        raise ValueError(f"a broker token lives at most {MAX_BROKER_TOKEN_S} s")
    issued = int(now if now is not None else time.time())
    scopes = [scope.with_prefix(resource_server_id)
              for scope in scopes_for(role, subject, vhost, app=app)]  # fmt: skip
    principal = Principal.token(role, subject, key_id)
    claims = {  # the broker names the connection's user after ``sub``: the principal
        "iss": ISSUER, "aud": [resource_server_id], "sub": principal.user_name,
        "scope": scopes, "iat": issued, "exp": issued + ttl_s, "jti": uuid.uuid4().hex[:16],
        "idlecloud_subject": subject, "idlecloud_role": role,
    }  # fmt: skip
    signer = key.broker_key(REPLICAS if role == "replica" else key_id)
    headers = {"kid": signer.kid}
    return jwt.encode(claims, signer.secret, algorithm=_BROKER_ALGORITHM, headers=headers), (
        issued + ttl_s
    )
