"""Who a process-runtime replica runs as: a uid of its own, a gid for its namespace.

A researcher's code never runs with the agent's privileges. Each replica gets an
unprivileged uid from a configured range that no account of the PC uses (the whole range
is checked against ``getent passwd`` when the agent starts, and each uid again against
the account database, LDAP included, when it is handed out), a gid for its namespace from
the same range (checked against the group database), no supplementary groups, and a
private home folder (``HOME``, ``TMPDIR`` and its working folder, mode 0700). A uid goes
back to the pool only once nothing of its previous owner remains: no process runs as it,
its home is gone, and no top-level entry of the shared scratch folders (``/tmp``,
``/var/tmp``, ``/dev/shm``) belongs to it; until then it is retired and checked again
later. Uids are handed out round-robin, so a freed one is the last to be reused.

:func:`become` runs in the child between ``fork`` and ``exec``, after the cgroup join
(which needs root): groups, gid, the capability bounding set emptied, uid, then
``no_new_privs`` and umask 077.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import hashlib
import json
import os
import pwd
import shutil
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["Identities", "Identity", "UidRange", "become", "uid_block"]

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_SCRATCH = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))
_libc = ctypes.CDLL(None, use_errno=True)
#: Where :func:`uid_block` draws blocks: 900,000 blocks of 1,000 below the agent's default.
_BLOCK_BASE, _BLOCK_SIZE, _BLOCKS = 1_000_000_000, 1000, 900_000


@dataclass(frozen=True, slots=True)
class UidRange:
    """An inclusive range of ids, written ``FIRST-LAST``."""

    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> UidRange:
        """Read ``FIRST-LAST``.

        Raises:
            ValueError: not two ids in order, or ids root or out of range.
        """
        first, sep, last = text.partition("-")
        if not sep or not first.strip().isdigit() or not last.strip().isdigit():
            raise ValueError(f"replica uids {text!r}: write FIRST-LAST, e.g. 2000000000-2000099999")
        parsed = cls(int(first), int(last))
        if not 1000 <= parsed.first <= parsed.last <= 2**32 - 2:
            raise ValueError(f"replica uids {text!r}: need 1000 <= FIRST <= LAST <= {2**32 - 2}")
        return parsed

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.first <= value <= self.last

    def __len__(self) -> int:
        return self.last - self.first + 1


def uid_block(key: str, taken: Collection[UidRange] = ()) -> UidRange:
    """A block of 1,000 uids chosen by ``key`` (a simulated PC's folder and name), not one
    of ``taken``: so PCs sharing one machine never share a uid."""
    seed = hashlib.sha256(key.encode()).digest()
    block = int.from_bytes(seed[:8], "big") % _BLOCKS
    while True:
        first = _BLOCK_BASE + block * _BLOCK_SIZE
        candidate = UidRange(first, first + _BLOCK_SIZE - 1)
        if candidate not in taken:
            return candidate
        block = (block + 1) % _BLOCKS


@dataclass(frozen=True, slots=True)
class Identity:
    """The uid, gid and private folder one replica runs with."""

    uid: int
    gid: int
    home: Path


def _accounts_in(ids: UidRange) -> list[str]:
    """Accounts and groups of this PC (as NSS lists them) whose ids fall in ``ids``."""
    users = [f"user {u.pw_name} ({u.pw_uid})" for u in pwd.getpwall() if u.pw_uid in ids]
    groups = [f"group {g.gr_name} ({g.gr_gid})" for g in grp.getgrall() if g.gr_gid in ids]
    return users + groups


def _known_uid(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _known_gid(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True


def _unreachable(folder: Path) -> Path | None:
    """The first folder on the way to ``folder`` that other users cannot traverse."""
    for step in reversed([folder, *folder.parents]):
        if not os.stat(step).st_mode & stat.S_IXOTH:
            return step
    return None


class Identities:
    """Hands out replicas' uids and namespaces' gids and takes uids back; see the header."""

    def __init__(self, root: Path, ids: UidRange, *, scratch: Iterable[Path] = _SCRATCH) -> None:
        """Keep homes under ``root/homes`` and the allocation in ``root/identities.json``.

        Raises:
            ValueError: an account or group of this PC uses an id in ``ids``, or other
                users cannot reach ``root``; the message says what to change.
        """
        if clash := _accounts_in(ids):
            shown = ", ".join(clash[:3]) + (" …" if len(clash) > 3 else "")
            raise ValueError(
                f"replica uids {ids} overlap accounts of this PC: {shown}; "
                "choose a range no account uses (--replica-uids)"
            )
        self.ids = ids
        self._homes = root / "homes"
        self._homes.mkdir(parents=True, exist_ok=True)
        for folder in (root, self._homes):
            folder.chmod(0o711)  # replicas may pass through to their own folder, not list
        if (blocked := _unreachable(self._homes)) is not None:
            raise ValueError(
                f"replicas cannot reach their folders under {root}: other users may not "
                f"enter {blocked}; choose a --replica-dir they can (e.g. /var/lib/idlecloud)"
            )
        self._scratch = tuple(scratch)
        self._record = root / "identities.json"
        loaded = json.loads(self._record.read_text()) if self._record.exists() else {}
        self._uids: dict[str, int] = loaded.get("uids", {})
        self._gids: dict[str, int] = loaded.get("gids", {})
        self._retired: list[int] = loaded.get("retired", [])
        self._next: int = loaded.get("next", ids.first)

    def _save(self) -> None:
        record = {"uids": self._uids, "gids": self._gids, "retired": self._retired,
                  "next": self._next}  # fmt: skip
        staged = self._record.with_suffix(".tmp")
        staged.write_text(json.dumps(record))
        staged.replace(self._record)

    def home(self, replica_id: str) -> Path:
        """The private folder of ``replica_id``."""
        return self._homes / replica_id

    def assign(self, replica_id: str, namespace: str) -> Identity:
        """The replica's identity (made on first call), with its home folder ready.

        Raises:
            LookupError: every uid of the range is in use or retired.
        """
        gid = self._gids.get(namespace)
        if gid is None:
            taken = set(self._gids.values())
            gid = next(
                (g for g in range(self.ids.first, self.ids.last + 1)
                 if g not in taken and not _known_gid(g)),
                None,
            )  # fmt: skip
            if gid is None:
                raise LookupError(f"no gid left in {self.ids} for namespace {namespace}")
            self._gids[namespace] = gid
        uid = self._uids.get(replica_id)
        if uid is None:
            self._free_retired()
            uid = self._pick()
            self._uids[replica_id] = uid
        self._save()
        home = self.home(replica_id)
        home.mkdir(mode=0o700, exist_ok=True)
        os.chown(home, uid, gid)
        home.chmod(0o700)
        return Identity(uid, gid, home)

    def _pick(self) -> int:
        in_use = set(self._uids.values()) | set(self._retired)
        for offset in range(len(self.ids)):
            uid = self.ids.first + (self._next - self.ids.first + offset) % len(self.ids)
            if uid not in in_use and not _known_uid(uid) and self._clean(uid):
                self._next = uid + 1 if uid < self.ids.last else self.ids.first
                return uid
        raise LookupError(f"this PC is out of replica uids: all of {self.ids} are in use")

    def release(self, replica_id: str) -> None:
        """Take back the replica's uid (its processes must be gone): remove its home and
        its entries in the scratch folders, and retire the uid if anything of it remains."""
        uid = self._uids.pop(replica_id, None)
        shutil.rmtree(self.home(replica_id), ignore_errors=True)
        if uid is not None:
            self._sweep(uid)
            if not self._clean(uid):
                self._retired.append(uid)
        self._save()

    def _free_retired(self) -> None:
        for uid in list(self._retired):
            self._sweep(uid)
            if self._clean(uid):
                self._retired.remove(uid)

    def _owned(self, uid: int) -> list[Path]:
        """Top-level entries of the scratch folders that belong to ``uid``."""
        found = []
        for folder in self._scratch:
            with contextlib.suppress(OSError):
                for entry in os.scandir(folder):
                    with contextlib.suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_uid == uid:
                            found.append(Path(entry.path))
        return found

    def _sweep(self, uid: int) -> None:
        for path in self._owned(uid):
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)  # fd-based on Linux: safe against symlink swaps
                else:
                    path.unlink()

    def _clean(self, uid: int) -> bool:
        """True once no process runs as ``uid`` and no file of it is left where we look."""
        for process in psutil.process_iter(["uids"]):
            uids = process.info["uids"]
            if uids is not None and uid in (uids.real, uids.effective, uids.saved):
                return False
        return not self._owned(uid)


def become(identity: Identity, data_gid: int | None = None) -> None:
    """In the child before ``exec``: drop to ``identity`` for good (see the header); with
    ``data_gid``, keep that one supplementary group (its namespace's data folder) and a
    umask of 007, so the namespace's other replicas may read what it writes there.

    Raises:
        OSError: a step was refused; the child then never runs the replica's command.
    """
    os.setgroups([] if data_gid is None else [data_gid])
    os.setresgid(identity.gid, identity.gid, identity.gid)
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last_cap + 1):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot drop a capability from the bounding set")
    os.setresuid(identity.uid, identity.uid, identity.uid)  # clears every capability
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot set no_new_privs")
    os.umask(0o077 if data_gid is None else 0o007)
