"""Who is calling the gateway: an API key or a broker token, checked like the broker would.

Both are JWTs signed by the auth service; the gateway holds only its public key. An API
key must not be revoked (the gateway follows the journal, so it knows); a broker token
lives ten minutes at most and carries its holder's role and subject.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt

from bus.devservices import RESOURCE_SERVER_ID
from services.auth.tokens import ISSUER, InvalidKey, read_api_key

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
    """The caller an API key or a broker token names.

    Raises:
        InvalidKey: a forged, expired, revoked or unknown credential.
    """
    try:
        audience = jwt.decode(credential, options={"verify_signature": False}).get("aud")
    except jwt.PyJWTError:
        raise InvalidKey("the credential is not a JWT") from None
    audiences = audience if isinstance(audience, list) else [audience]
    if RESOURCE_SERVER_ID in audiences:  # a broker token
        try:
            claims = jwt.decode(credential, public_pem, algorithms=["RS256"], issuer=ISSUER,
                                audience=RESOURCE_SERVER_ID,
                                options={"require": ["exp", "sub"]})  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise InvalidKey("the broker token has expired; fetch a new one") from None
        except jwt.PyJWTError as error:
            raise InvalidKey(f"not a valid broker token: {error}") from None
        caller = Caller(str(claims.get("idlecloud_role", "")),
                        str(claims.get("idlecloud_subject", "")), str(claims["sub"]))  # fmt: skip
    else:
        api_key = read_api_key(credential, public_pem)
        caller = Caller(api_key.role, api_key.subject, api_key.key_id)
    if caller.key_id in revoked:
        raise InvalidKey("the API key was revoked")
    return caller
