"""Linux control groups, v1 and v2: find a process's groups, read use, set limits, freeze.

One :class:`Cgroup` names a group in every hierarchy that matters here (``cpu``,
``cpuacct``, ``memory`` and ``freezer`` on v1; the one unified tree on v2). The Docker
runtime reads a container's use through it; the process runtime creates one group per
replica with its CPU quota and memory limit, moves the replica into it before ``exec``,
and freezes it to pause. Where the tree is not writable the process runtime falls back
to rlimits and signals.

Under systemd the agent's unit has ``Delegate=yes``: its own subtree is the agent's to
manage, and :func:`replica_parent` nests replicas' groups inside it (``<unit>/replicas``)
instead of writing outside it. On v2 a group with children may hold no process, so the
agent first moves itself into a leaf of its own (``<unit>/agent``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CPU_PERIOD_US",
    "Cgroup",
    "Mounts",
    "ReplicaParent",
    "WeightChain",
    "cpu_times_ns",
    "own_groups",
    "replica_groups",
    "replica_parent",
]

#: The CFS period our CPU quotas are expressed in.
CPU_PERIOD_US = 100_000
_V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "freezer")


@dataclass(frozen=True, slots=True)
class Mounts:
    """Where each v1 controller and the v2 tree are mounted (from ``/proc/self/mounts``)."""

    v1: dict[str, Path]
    v2: Path | None

    @classmethod
    def read(cls, mounts_file: str = "/proc/self/mounts") -> Mounts:
        """The cgroup mounts of this machine."""
        v1: dict[str, Path] = {}
        v2: Path | None = None
        for line in Path(mounts_file).read_text().splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            kind, where, options = fields[2], Path(fields[1]), fields[3].split(",")
            if kind == "cgroup2":
                v2 = where
            elif kind == "cgroup":
                v1.update({option: where for option in options if option in _V1_CONTROLLERS})
        return cls(v1, v2)

    @property
    def unified(self) -> bool:
        """True where the v1 controllers are absent and the v2 tree does everything."""
        return not self.v1 and self.v2 is not None


@dataclass(frozen=True, slots=True)
class Cgroup:
    """One control group, as a folder per v1 controller or one v2 folder."""

    dirs: dict[str, Path]  # controller -> folder; on v2 every controller maps to one folder
    unified: bool

    @classmethod
    def of_pid(cls, pid: int, mounts: Mounts) -> Cgroup:
        """The groups ``pid`` belongs to.

        Raises:
            OSError: the process is gone.
        """
        dirs: dict[str, Path] = {}
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            relative = path.lstrip("/")
            if controllers == "" and mounts.unified and mounts.v2 is not None:
                dirs = dict.fromkeys(_V1_CONTROLLERS, mounts.v2 / relative)
            for controller in controllers.split(","):
                if controller in mounts.v1:
                    dirs[controller] = mounts.v1[controller] / relative
        return cls(dirs, mounts.unified)

    @classmethod
    def named(cls, relative: str, mounts: Mounts) -> Cgroup:
        """The group ``relative`` in every hierarchy we use, whether it exists or not."""
        if mounts.unified:
            assert mounts.v2 is not None
            return cls(dict.fromkeys(_V1_CONTROLLERS, mounts.v2 / relative), unified=True)
        return cls({c: mounts.v1[c] / relative for c in _V1_CONTROLLERS if c in mounts.v1},
                   unified=False)  # fmt: skip

    @classmethod
    def create(cls, relative: str, mounts: Mounts) -> Cgroup | None:
        """Make the group ``relative`` (e.g. ``idlecloud/r1``) in every hierarchy we use.

        Returns None where the tree is not writable (no root, a read-only mount).
        """
        if mounts.unified:
            assert mounts.v2 is not None
            group = cls.named(relative, mounts)
            parent = mounts.v2
            try:
                for part in Path(relative).parts:
                    # the parent must hand its cpu and memory controllers down to us
                    (parent / "cgroup.subtree_control").write_text("+cpu +memory")
                    parent = parent / part
                    parent.mkdir(exist_ok=True)
            except OSError:
                return None
            return group
        if not all(controller in mounts.v1 for controller in _V1_CONTROLLERS):
            return None
        group = cls.named(relative, mounts)
        try:
            for folder in group.dirs.values():
                folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return group

    def _file(self, controller: str, v1_name: str, v2_name: str) -> Path:
        return self.dirs[controller] / (v2_name if self.unified else v1_name)

    def limit(self, cpu_millicores: int, memory_mib: int) -> None:
        """CPU quota and memory limit equal to a reservation, at the lowest CPU weight.

        Raises:
            OSError: the limits could not be written.
        """
        quota_us = max(1000, cpu_millicores * CPU_PERIOD_US // 1000)
        memory_bytes = memory_mib * 2**20
        if self.unified:
            folder = self.dirs["cpu"]
            (folder / "cpu.max").write_text(f"{quota_us} {CPU_PERIOD_US}")
            (folder / "cpu.weight").write_text("1")
            (folder / "memory.max").write_text(str(memory_bytes))
            (folder / "memory.swap.max").write_text("0")
            return
        (self.dirs["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (self.dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(quota_us))
        (self.dirs["cpu"] / "cpu.shares").write_text("2")
        (self.dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))

    def lowest_class(self) -> None:
        """Put the whole group at the lowest CPU weight and scheduling class: ``cpu.idle``
        on v2; on v1 (which has no such file) ``SCHED_IDLE`` for each of its threads, which
        the threads and processes they start later inherit.

        Raises:
            OSError: the group is gone or not writable.
        """
        self._scheduling(idle=True)

    def boost(self) -> None:
        """Give the whole group a normal CPU weight and class, so each of its tasks runs
        soon: a task freezes, or dies of SIGKILL, only when it next runs, and a PC busy
        with a person's work would starve the lowest class for seconds.

        Raises:
            OSError: the group is gone or not writable.
        """
        self._scheduling(idle=False)

    def weigh(self, *, lowest: bool) -> None:
        """The group's own CPU weight among its siblings: the lowest (an idle group, on
        v2), or a normal one.

        Raises:
            OSError: the group is gone or not writable.
        """
        folder = self.dirs["cpu"]
        if self.unified:  # the kernel takes no weight for an idle group: idle goes last
            writes = [("cpu.weight", "1"), ("cpu.idle", "1")]
            for name, value in writes if lowest else [("cpu.idle", "0"), ("cpu.weight", "100")]:
                (folder / name).write_text(value)
            return
        (folder / "cpu.shares").write_text("2" if lowest else "1024")

    def _scheduling(self, *, idle: bool) -> None:
        self.weigh(lowest=idle)
        if self.unified:
            return
        policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
        for tid in (self.dirs["cpu"] / "tasks").read_text().split():
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.sched_setscheduler(int(tid), policy, os.sched_param(0))

    def join(self, pid: int) -> None:
        """Move ``pid`` into this group (children it forks later follow it).

        Raises:
            OSError: the group is gone or not writable.
        """
        for folder in set(self.dirs.values()):
            (folder / "cgroup.procs").write_text(str(pid))

    def cpu_usage_ns(self) -> int | None:
        """CPU time used by the whole group, or None if it cannot be read."""
        try:
            if self.unified:
                for line in (self.dirs["cpuacct"] / "cpu.stat").read_text().splitlines():
                    key, value = line.split()
                    if key == "usage_usec":
                        return int(value) * 1000
                return None
            return int((self.dirs["cpuacct"] / "cpuacct.usage").read_text())
        except (OSError, ValueError, KeyError):
            return None

    def memory_bytes(self) -> int | None:
        """Memory charged to the group now, or None if it cannot be read."""
        try:
            return int(self._file("memory", "memory.usage_in_bytes", "memory.current").read_text())
        except (OSError, ValueError, KeyError):
            return None

    def freeze(self) -> None:
        """Ask the kernel to freeze every task of the group (see :meth:`frozen`), boosted
        first so that they freeze at once (:meth:`boost`).

        Raises:
            OSError: the freezer is not writable.
        """
        self.boost()
        self._set_frozen(True)

    def thaw(self) -> None:
        """Let every task of the group run again, at the lowest class.

        Raises:
            OSError: the freezer is not writable.
        """
        self.lowest_class()
        self._set_frozen(False)

    def let_die(self) -> None:
        """Thaw the group at a normal class, after SIGKILL: its tasks die once they run.

        Raises:
            OSError: the freezer is not writable.
        """
        self.boost()
        self._set_frozen(False)

    def _set_frozen(self, frozen: bool) -> None:
        text = ("1" if frozen else "0") if self.unified else ("FROZEN" if frozen else "THAWED")
        self._file("freezer", "freezer.state", "cgroup.freeze").write_text(text)

    def frozen(self) -> bool:
        """True once every task is frozen (FREEZING is not yet frozen)."""
        try:
            if self.unified:
                events = (self.dirs["freezer"] / "cgroup.events").read_text()
                return "frozen 1" in events.splitlines()
            return (self.dirs["freezer"] / "freezer.state").read_text().strip() == "FROZEN"
        except (OSError, KeyError):
            return False

    def exists(self) -> bool:
        """True while the group's folders are there (a stop removes them)."""
        return all(folder.is_dir() for folder in set(self.dirs.values()))

    def pids(self) -> list[int]:
        """Every process in the group."""
        try:
            text = (self.dirs["freezer"] / "cgroup.procs").read_text()
        except (OSError, KeyError):
            return []
        return [int(pid) for pid in text.split()]

    def remove(self) -> bool:
        """Delete the group's folders; True once they are all gone. The kernel refuses
        while a process (or a child group) is still there: call again later."""
        for folder in set(self.dirs.values()):
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(folder)
        return not any(folder.exists() for folder in set(self.dirs.values()))


def cpu_times_ns(groups: Mapping[str, Cgroup | None]) -> dict[str, int]:
    """The CPU time of each named group that has one and can be read."""
    used = {}
    for name, group in groups.items():
        cpu_ns = group.cpu_usage_ns() if group is not None else None
        if cpu_ns is not None:
            used[name] = cpu_ns
    return used


def own_groups(relative: str) -> list[str]:
    """``relative`` and each group above it that is the agent's own, deepest first: every
    one below the first systemd unit, slice or scope (those are systemd's to weigh)."""
    parts = Path(relative).parts
    owned = []
    for depth in range(len(parts), 0, -1):
        if parts[depth - 1].endswith((".service", ".slice", ".scope")):
            break
        owned.append("/".join(parts[:depth]))
    return owned


class WeightChain:
    """The agent's own groups above a PC's replicas, at the lowest CPU weight.

    A group's weight counts only among its siblings: a replica's group at the lowest weight
    inside a parent of normal weight would take its parent's whole share from the person's
    processes. So every level the agent owns is at the lowest weight too. A replica that
    must run once, to freeze or to die of SIGKILL, would then wait for seconds on a busy PC:
    :meth:`raised` gives the chain a normal weight for as long as any replica must run.
    """

    def __init__(self, groups: Iterable[Cgroup]) -> None:
        self._groups = tuple(groups)
        self._raised = 0
        self._weigh(lowest=True)

    @contextlib.contextmanager
    def raised(self) -> Iterator[None]:
        """A normal weight while the block runs (and any other block raising it)."""
        self._raised += 1
        if self._raised == 1:
            self._weigh(lowest=False)
        try:
            yield
        finally:
            self._raised -= 1
            if self._raised == 0:
                self._weigh(lowest=True)

    def _weigh(self, *, lowest: bool) -> None:
        for group in self._groups:
            with contextlib.suppress(OSError):  # not writable: nothing to keep low
                group.weigh(lowest=lowest)


@dataclass(frozen=True, slots=True)
class ReplicaParent:
    """Where replicas' groups go, and the leaf the agent must move into first (v2, when
    it nests them inside its own delegated group), if any."""

    path: str
    agent_leaf: str | None = None


def replica_parent(own_cgroups: str, node: str, *, unified: bool) -> ReplicaParent:
    """Where a PC's replicas' groups go, from the agent's own ``/proc/self/cgroup``.

    Inside a systemd unit (its group ends in ``.service``: the unit delegates it) they
    nest in it; elsewhere (a shell, a simulated PC, no systemd) they go under
    ``idlecloud/<node>``.
    """
    own = ""
    for line in own_cgroups.splitlines():
        _, controllers, path = line.split(":", 2)
        if (unified and controllers == "") or (not unified and "cpu" in controllers.split(",")):
            own = path.strip("/")
    if not own.endswith(".service"):
        return ReplicaParent(f"idlecloud/{node}")
    return ReplicaParent(f"{own}/replicas", f"{own}/agent" if unified else None)


def replica_groups(mounts: Mounts, parents: Iterable[str]) -> list[Path]:
    """Every group at or below each of ``parents`` (e.g. ``idlecloud/edge``) in every
    hierarchy we make groups in (each v1 controller's, and v2's), deepest first: what a
    check for leftovers looks at."""
    roots = set(mounts.v1.values()) | ({mounts.v2} if mounts.v2 is not None else set())
    found: set[Path] = set()
    for root in roots:
        for parent in parents:
            top = root / parent
            if top.is_dir():
                found.add(top)
                found.update(path for path in top.rglob("*") if path.is_dir())
    return sorted(found, key=lambda path: (len(path.parts), str(path)), reverse=True)
