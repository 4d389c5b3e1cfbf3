"""Who is calling the gateway: an API key, checked like the auth service checks it.

Both are JWTs signed by the auth service; the gateway holds only its public key. An API
key must not be revoked (the gateway follows the journal, so it knows); a broker token
lives ten minutes at most and carries its holder's role and subject.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt

from bus.apikeys import InvalidKey, read_api_key
from bus.defaults import RESOURCE_SERVER_ID

__all__ = ["Caller", "identify"]


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: its role, subject (namespace, PC or admin) and key id."""

    role: str
    subject: str
    key_id: str

    def may_act_for(self, namespace: str) -> bool:
        """Whether this caller may read and change ``namespace``."""
        return self.role == "admin" or (self.role == "user" and self.subject == namespace)


def identify(credential: str, public_pem: bytes, revoked: set[str] | dict[str, int]) -> Caller:
    """The caller an API key names.

    Broker tokens are refused: each is signed with its own key's broker key, which only
    the auth service and the broker know, so the gateway could not check one.

    Raises:
        InvalidKey: a forged, expired, revoked or unknown credential, or a broker token.
    """
    try:
        audience = jwt.decode(credential, options={"verify_signature": False}).get("aud")
    except jwt.PyJWTError:
        raise InvalidKey("the credential is not a JWT") from None
    audiences = audience if isinstance(audience, list) else [audience]
    if RESOURCE_SERVER_ID in audiences:
        raise InvalidKey("a broker token is for the broker; send the API key instead")
    api_key = read_api_key(credential, public_pem)
    caller = Caller(api_key.role, api_key.subject, api_key.key_id)
    if caller.key_id in revoked:
        raise InvalidKey("the API key was revoked")
    return caller
