"""The replicas' broker tokens on disk: one folder per replica, rewritten on renewal.

A replica reads its token from ``<folder>/token`` (the Docker runtime mounts the folder
read-only at :data:`MOUNT_POINT`). A renewal writes a new file beside the old one and
renames it over it, so a reader sees the old token or the new one, never half of either;
mounting the folder rather than the file is what lets a container see the renamed file.
The runtime hands each folder to the identity its replica runs as (mode 0500, the file
0400); a renewed file takes the owner of its folder, so only that replica reads it. The
tokens' parent folder may be passed through but not listed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["MOUNT_POINT", "TOKEN_FILE_ENV", "TokenFiles", "hand_over"]

#: Where a container finds its token folder.
MOUNT_POINT = "/run/idlecloud"
#: The variable naming the token file in a replica's environment (see bus.sdk.contract).
TOKEN_FILE_ENV = "IDLECLOUD_TOKEN_FILE"


def hand_over(folder: Path, uid: int, gid: int) -> None:
    """Make a replica's folder (its token's, its status's) and what is in it the replica's
    identity's, and nobody else's."""
    for path in (folder, *folder.iterdir()):
        os.chown(path, uid, gid, follow_symlinks=False)


class TokenFiles:
    """Writes, renews and removes each replica's token file under ``replica_dir/tokens``."""

    def __init__(self, replica_dir: Path) -> None:
        #: The agent's folder of per-replica state (this keeps its ``tokens``).
        self.replica_dir = replica_dir
        self._root = replica_dir / "tokens"
        self._root.mkdir(parents=True, exist_ok=True)
        self._root.chmod(0o711)

    def folder(self, replica_id: str) -> Path:
        """The folder holding ``replica_id``'s token."""
        return self._root / replica_id

    def write(self, replica_id: str, token: str) -> Path:
        """Put ``token`` in the replica's file, atomically; returns the replica's folder."""
        folder = self.folder(replica_id)
        folder.mkdir(mode=0o500, exist_ok=True)
        owner = folder.stat()
        staged = folder / ".token.new"
        descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o400)
        with os.fdopen(descriptor, "w") as file:
            os.fchown(file.fileno(), owner.st_uid, owner.st_gid)
            file.write(token)
        os.replace(staged, folder / "token")
        return folder

    def remove(self, replica_id: str) -> None:
        """Forget the replica's token."""
        shutil.rmtree(self.folder(replica_id), ignore_errors=True)
