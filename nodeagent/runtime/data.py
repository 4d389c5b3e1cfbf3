"""A namespace's data folder: ``<data root>/<namespace>``, the same on every lab PC.

A site may give its agents a data root (``bus agent run --data-root``): a folder every lab
PC mounts alike (an NFS or SMB share; simulated PCs share one local folder). Each replica
then finds its namespace's folder, read-write, at ``IDLECLOUD_DATA``: the process runtime
gives the folder's own path and adds the folder's group to the replica's groups (and a
umask of 007, so what one replica writes the others of its namespace may read); Docker
bind-mounts that folder alone at ``/data`` and adds the group to the container's user.

A folder is mode ``2770``, owned by root and a group of its namespace's own, and the root
``0711`` (passable, not listable): a replica of another namespace cannot list, read or
write it, and files made in it take its group (setgid). The group is site-wide, because
NFS's root squash forbids a PC's root to change a file's owner: it is the folder's own
group. The first agent to need a folder makes it, under a temporary name renamed into
place (so no agent ever sees it half made), with a gid from ``--data-gids`` that no other
folder of the root and no group of the PC uses, the namespace's hash picking where to
start looking. An admin may make the folders beforehand with groups of the site's own;
any gid below 1000 (a system group) is refused.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from nodeagent.runtime.identity import UidRange
from nodeagent.runtime.spec import StartFailed

__all__ = ["DATA_ENV", "DATA_GIDS", "DOCKER_DATA", "DataFolder", "DataFolders"]

#: Where a replica finds its namespace's data folder (the container contract).
DATA_ENV = "IDLECLOUD_DATA"
#: Where Docker mounts it in a container.
DOCKER_DATA = "/data"

#: Where data folders' gids are drawn unless the site says: far from accounts and groups,
#: apart from the replicas' ids (a replica's namespace gid on its PC is drawn from its uid
#: range: 2,000,000,000 up by default; simulated PCs' blocks lie in 1,000,000,000 to
#: 1,899,999,999), so no replica's own group can be a data folder's, and below 2**31
#: (Docker takes no larger gid).
DATA_GIDS = UidRange(1_950_000_000, 1_950_999_999)
_SYSTEM_GIDS = 1000


@dataclass(frozen=True, slots=True)
class DataFolder:
    """A namespace's folder on this PC, and the group that may use it."""

    path: Path
    gid: int


def _group_exists(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True


class DataFolders:
    """The namespaces' folders under one data root; see the module header."""

    def __init__(self, root: Path, gids: UidRange = DATA_GIDS) -> None:
        """Use ``root`` (made if missing; made passable but not listable where it may).

        Raises:
            ValueError: ``root`` is not a folder.
        """
        root.mkdir(parents=True, exist_ok=True)
        if not root.is_dir():
            raise ValueError(f"the data root {root} is not a folder")
        with contextlib.suppress(PermissionError):  # a share's root is its admin's to set
            root.chmod(0o711)
        self.root = root
        self.gids = gids

    def folder(self, namespace: str) -> DataFolder:
        """The namespace's folder, made on first use.

        Raises:
            StartFailed: it cannot be made or read, or its group is a system group (below
                1000); the message says which.
        """
        try:
            return self._folder(namespace)
        except OSError as error:
            raise StartFailed(f"cannot use the data folder of {namespace} under {self.root}: "
                              f"{error.strerror or error}") from None  # fmt: skip

    def _folder(self, namespace: str) -> DataFolder:
        path = self.root / namespace
        if not path.exists():
            self._make(path, namespace)
        gid = path.stat().st_gid
        if gid < _SYSTEM_GIDS:
            raise StartFailed(
                f"the data folder {path} belongs to group {gid}, a system group; give it a "
                "group of its namespace's own (chgrp, chmod 2770)"
            )
        return DataFolder(path, gid)

    def _make(self, path: Path, namespace: str) -> None:
        staged = self.root / f".{namespace}.{secrets.token_hex(4)}"
        staged.mkdir(mode=0o700)
        try:
            os.chown(staged, 0, self._free_gid(namespace))
            staged.chmod(0o2770)
            with contextlib.suppress(OSError):  # another agent was first: its folder stands
                staged.rename(path)
        finally:
            with contextlib.suppress(OSError):
                staged.rmdir()  # only if the rename did not take it

    def _free_gid(self, namespace: str) -> int:
        taken = set()
        for entry in self.root.iterdir():
            with contextlib.suppress(OSError):
                taken.add(entry.stat().st_gid)
        start = int.from_bytes(hashlib.sha256(namespace.encode()).digest()[:8], "big")
        for offset in range(len(self.gids)):
            gid = self.gids.first + (start + offset) % len(self.gids)
            if gid not in taken and not _group_exists(gid):
                return gid
        raise OSError(f"no gid left in {self.gids} for the data folder of {namespace}")
