"""The container contract: what a replica started by the platform finds in its environment.

``IDLECLOUD_URL`` (the broker), ``IDLECLOUD_NAMESPACE``, ``IDLECLOUD_APP`` and
``IDLECLOUD_TOKEN_FILE`` (a file holding the replica's broker token, which the platform
rewrites before the token expires). Outside the platform the same variables, or the
matching flags of `bus worker`, let a researcher run a worker on her own machine.
"""

from __future__ import annotations

from pathlib import Path

from yarl import URL

__all__ = ["broker_url_with_token", "read_token"]


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
    """``url`` with the token from ``token_file`` as its password (unchanged without one)."""
    if not token_file:
        return url
    parsed = URL(url)
    return str(parsed.with_user(parsed.user or "idlecloud").with_password(read_token(token_file)))
