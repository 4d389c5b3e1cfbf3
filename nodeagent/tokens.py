"""The replicas' broker tokens on disk: one folder per replica, rewritten on renewal.

A replica reads its token from ``<folder>/token`` (the Docker runtime mounts the folder
read-only at :data:`MOUNT_POINT`). A renewal writes a new file beside the old one and
renames it over it, so a reader sees the old token or the new one, never half of either;
mounting the folder rather than the file is what lets a container see the renamed file.
The tokens' parent folder is private to the agent's user.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["MOUNT_POINT", "TOKEN_FILE_ENV", "TokenFiles"]

#: Where a container finds its token folder.
MOUNT_POINT = "/run/idlecloud"
#: The variable naming the token file in a replica's environment (see bus.sdk.contract).
TOKEN_FILE_ENV = "IDLECLOUD_TOKEN_FILE"


class TokenFiles:
    """Writes, renews and removes each replica's token file under ``state_dir/tokens``."""

    def __init__(self, state_dir: Path) -> None:
        self._root = state_dir / "tokens"
        self._root.mkdir(parents=True, exist_ok=True)
        self._root.chmod(0o700)

    def folder(self, replica_id: str) -> Path:
        """The folder holding ``replica_id``'s token."""
        return self._root / replica_id

    def write(self, replica_id: str, token: str) -> Path:
        """Put ``token`` in the replica's file, atomically; returns the replica's folder."""
        folder = self.folder(replica_id)
        folder.mkdir(exist_ok=True)
        folder.chmod(0o755)  # the container's unprivileged user must read it
        staged = folder / ".token.new"
        staged.write_text(token)
        staged.chmod(0o444)
        os.replace(staged, folder / "token")
        return folder

    def remove(self, replica_id: str) -> None:
        """Forget the replica's token."""
        shutil.rmtree(self.folder(replica_id), ignore_errors=True)
