"""Linux control groups, v1 and v2: find a process's groups, read use, set limits, freeze.

One :class:`Cgroup` names a group in every hierarchy that matters here (``cpu``,
``cpuacct``, ``memory`` and ``freezer`` on v1; the one unified tree on v2). The Docker
runtime reads a container's use through it; the process runtime creates one group per
replica with its CPU quota and memory limit, moves the replica into it before ``exec``,
and freezes it to pause. Where the tree is not writable the process runtime falls back
to rlimits and signals. Where the groups go is :mod:`nodeagent.runtime.hierarchy`'s.

A replica runs at the lowest scheduling class, and freezing needs each of its tasks to
run once: a freeze wakes them at a real-time class (:meth:`Cgroup.freeze`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CPU_PERIOD_US",
    "RT_REPLICA_SHARE",
    "Cgroup",
    "Mounts",
    "cpu_times_ns",
]

#: The CFS period our CPU quotas are expressed in.
CPU_PERIOD_US = 100_000
#: The period of real-time budgets, and a freezing replica's share of it: freezing takes
#: a task microseconds, and a budget bounds what a task that does not freeze could take.
_RT_PERIOD_US = 100_000
RT_REPLICA_SHARE = 0.01
_V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "freezer")


@dataclass(frozen=True, slots=True)
class Mounts:
    """Where each v1 controller and the v2 tree are mounted (from ``/proc/self/mounts``)."""

    v1: dict[str, Path]
    v2: Path | None
    #: Every cgroup hierarchy mounted (Docker makes a container's parent in each one).
    hierarchies: tuple[Path, ...] = ()

    @classmethod
    def read(cls, mounts_file: str = "/proc/self/mounts") -> Mounts:
        """The cgroup mounts of this machine."""
        v1: dict[str, Path] = {}
        v2: Path | None = None
        hierarchies: list[Path] = []
        for line in Path(mounts_file).read_text().splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            kind, where, options = fields[2], Path(fields[1]), fields[3].split(",")
            if kind == "cgroup2":
                v2 = where
            elif kind == "cgroup":
                v1.update({option: where for option in options if option in _V1_CONTROLLERS})
            if kind in ("cgroup", "cgroup2"):
                hierarchies.append(where)
        return cls(v1, v2, tuple(hierarchies))

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
        on v2 (v1 has no such file), and ``SCHED_IDLE`` for each of its threads, which the
        threads and processes they start later inherit. A real-time budget a freeze gave
        it goes back to its parent.

        Raises:
            OSError: the group is gone or not writable.
        """
        self._scheduling(idle=True)
        self.budget_realtime(0)

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
        self._set_policy(os.SCHED_IDLE if idle else os.SCHED_OTHER)

    def _set_policy(self, policy: int, priority: int = 0) -> None:
        for tid in self._file("cpu", "tasks", "cgroup.threads").read_text().split():
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.sched_setscheduler(int(tid), policy, os.sched_param(priority))

    def budget_realtime(self, share: float) -> None:
        """Let the group's tasks take ``share`` of every 100 ms at a real-time class (0:
        none), where the kernel budgets real time per group (cgroup v1 with
        ``RT_GROUP_SCHED``: there a group without a budget may run no real-time task).
        Nothing where it does not, or where the parent's budget has no room (each level's
        budgets must fit in its parent's, so a budget is held only while it is needed).
        """
        folder = self.dirs["cpu"]
        runtime = folder / "cpu.rt_runtime_us"
        if self.unified or not runtime.exists():
            return
        with contextlib.suppress(OSError):
            if share > 0:
                (folder / "cpu.rt_period_us").write_text(str(_RT_PERIOD_US))
            runtime.write_text(str(round(share * _RT_PERIOD_US)))

    def _wake(self) -> None:
        """Run each task of a freezing group now, so that it freezes now: a task freezes
        only when it next runs, and one that ran at the lowest class waited behind two CPU
        hogs for up to 137 ms even once raised to a normal class, or to nice -20, where a
        real-time class took at most 7 ms (40 trials each). Where the kernel budgets real
        time per group, the group gets 1 % first (:meth:`budget_realtime`), and a normal
        class if that finds no room. Call it only once the freezer was asked: a real-time
        task that did not freeze would keep a core.

        Raises:
            OSError: the group is gone.
        """
        self.budget_realtime(RT_REPLICA_SHARE)
        try:  # children forked meanwhile start at a normal class, and freeze at birth
            self._set_policy(os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, 1)
        except PermissionError:  # the kernel wants a budget, and there is no room
            self._set_policy(os.SCHED_OTHER)

    def join(self, pid: int) -> None:
        """Move ``pid`` into this group (children it forks later follow it).

        Raises:
            OSError: the group is gone or not writable.
        """
        for folder in set(self.dirs.values()):
            (folder / "cgroup.procs").write_text(str(pid))

    @property
    def cpu_usage_file(self) -> Path:
        """The file :meth:`cpu_usage_ns` reads.

        Raises:
            KeyError: the group has no ``cpuacct`` controller.
        """
        return self._file("cpuacct", "cpuacct.usage", "cpu.stat")

    def cpu_usage_ns(self, text: bytes | None = None) -> int | None:
        """CPU time used by the whole group, read now (or from ``text``, what its
        :attr:`cpu_usage_file` held), or None if it cannot be read."""
        try:
            if text is None:
                fd = os.open(self.cpu_usage_file, os.O_RDONLY)  # no text decoding: 2x faster
                try:
                    text = os.read(fd, 4096)
                finally:
                    os.close(fd)
            if not self.unified:
                return int(text)
            for line in text.splitlines():
                key, value = line.split()
                if key == b"usage_usec":
                    return int(value) * 1000
            return None
        except (OSError, ValueError, KeyError):
            return None

    def memory_bytes(self) -> int | None:
        """Memory charged to the group now, or None if it cannot be read."""
        try:
            return int(self._file("memory", "memory.usage_in_bytes", "memory.current").read_text())
        except (OSError, ValueError, KeyError):
            return None

    def freeze(self, below: Cgroup | None = None) -> None:
        """Ask the kernel to freeze every task of the group (see :meth:`frozen`), and wake
        each to freeze at once (:meth:`_wake`), in a group of normal weight. Once frozen,
        put it back at the lowest class (:meth:`lowest_class`).

        Args:
            below: the one group below whose tasks this one holds (a group lists only its
                own tasks): those are woken, within this one's real-time budget.

        Raises:
            OSError: the freezer is not writable.
        """
        woken = self if below is None else below
        if below is not None:
            self.budget_realtime(RT_REPLICA_SHARE)
        woken.weigh(lowest=False)
        self._set_frozen(True)
        woken._wake()

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
