"""The process runtime: replicas as local process groups, for PCs without Docker.

Each replica runs in its own session (so its whole process tree is one process group),
at the lowest scheduling class (``SCHED_IDLE``: it runs only on a core nothing else
wants, and a person's task that wakes takes the core at once; nice 19 too, which lowers
its I/O priority) so the person's programs always come first, under an identity of its own
(:mod:`nodeagent.runtime.identity`: its own uid, its namespace's gid, no capabilities,
``no_new_privs``, umask 077, a private home as ``HOME``, ``TMPDIR`` and working folder,
its token readable by it alone). Where the cgroup tree is writable (root on v1 or v2)
each replica gets its own control group, joined before privileges are dropped and before
``exec``, with a CPU quota and memory limit equal to its reservation at the lowest CPU
weight; pausing freezes the group (the kernel's freezer, which no child can escape; the
group gets a normal weight and class while it freezes, since a task freezes only when it
next runs, and a person's work would starve the lowest class for seconds) and
waits until it is frozen, or until a concurrent stop removed it (one that will not freeze
within a second is killed). Elsewhere its writable
private memory is capped by ``RLIMIT_DATA`` and pausing stops its process group
(SIGSTOP). Stopping sends SIGTERM and SIGKILL after the grace period; a paused replica
gets SIGKILL at once, since a SIGTERM would need it to run first.

The fork and ``exec`` happen in a helper thread, so the agent's event loop never waits
for a child that a saturated PC starves between the two; each child is reaped through a
pidfd watched by the loop. The caller's ``may_run`` is asked once more just before the
fork, so a start that a person's arrival overtook never begins.

A small JSON record per replica in the agent's state folder lets a restarted agent adopt
the replicas still running (matched by pid and start time, so a recycled pid is never
mistaken for a replica) instead of leaking or duplicating them. A stopped replica's
control group that the kernel will not remove yet (its last process is still exiting) is
removed on a later look, at the next heartbeat, until it is gone; :func:`kill_recorded`
ends a replica from its record alone, when no agent is left to (a simulated PC's plug
pulled), thawing a frozen one so it can die.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from nodeagent.load import PLATFORM_MARKER
from nodeagent.runtime.cgroup import Cgroup, Mounts, cpu_times_ns
from nodeagent.runtime.data import DATA_ENV, DataFolders
from nodeagent.runtime.hierarchy import WeightChain, own_groups
from nodeagent.runtime.identity import Identities, Identity, become
from nodeagent.runtime.output import Output, read_file_output
from nodeagent.runtime.spec import CpuMeter, ReplicaInfo, ReplicaSpec, StartCancelled, StartFailed
from nodeagent.status import STATUS_FILE_ENV
from nodeagent.tokens import TOKEN_FILE_ENV, hand_over
from schemas import ZERO, Amount, ReplicaState

__all__ = ["ProcessRuntime", "frozen", "kill_recorded"]

log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 20
_FREEZE_TIMEOUT_S = 1.0  # then a replica that will not freeze is killed


class _Child(subprocess.Popen[bytes]):
    """A replica's leading process: reaped by the runtime's pidfd watch, and left running,
    without a warning, when the runtime goes (the next agent adopts it)."""

    def __del__(self) -> None:
        pass


@dataclass
class _Replica:
    spec: ReplicaSpec
    pid: int
    started_at: float
    cgroup: Cgroup | None = None
    identity: Identity | None = None
    process: _Child | None = None
    paused: bool = False
    stopping: bool = False
    exit_code: int | None = None
    meter: CpuMeter = field(default_factory=CpuMeter)
    usage: Amount = ZERO


def _signal_all(pid: int, cgroup: Cgroup | None, signum: signal.Signals) -> None:
    """Signal a replica's process group and, with a cgroup, every process in the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
    for member in cgroup.pids() if cgroup is not None else ():
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signum)


def _tree(pid: int, children: dict[int, list[int]]) -> list[int]:
    """``pid`` and all its descendants, from one parent-to-children map."""
    found, waiting = [], [pid]
    while waiting:
        current = waiting.pop()
        found.append(current)
        waiting.extend(children.get(current, ()))
    return found


def frozen(pid: int, mounts: Mounts) -> bool:
    """True if ``pid`` cannot run: its freezer cgroup is frozen, or it is stopped by a signal.

    Raises:
        psutil.NoSuchProcess: it is gone.
    """
    with contextlib.suppress(OSError):
        if Cgroup.of_pid(pid, mounts).frozen():
            return True
    return bool(psutil.Process(pid).status() == psutil.STATUS_STOPPED)


def _confine_child(
    memory_mib: int, cgroup: Cgroup | None, identity: Identity | None, data_gid: int | None
) -> None:
    """Runs in the child between fork and exec: into its cgroup first (that needs root, and
    a freeze must catch it from here on), lowest CPU priority, then its own identity."""
    if cgroup is not None:
        cgroup.join(os.getpid())
    else:
        limit = memory_mib * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    os.nice(19)
    # inherited by every thread and child; with no capabilities it cannot be undone
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    if identity is not None:
        become(identity, data_gid)


class ProcessRuntime:
    """Replicas as process groups at the lowest scheduling class; see the module's header."""

    name = "process"

    def __init__(
        self,
        state_dir: str | Path,
        *,
        identities: Identities | None,
        insecure_same_user: bool = False,
        usage_interval_s: float = 5.0,
        cgroup_parent: str | None = "idlecloud",
        data: DataFolders | None = None,
    ) -> None:
        """Keep replicas' records in ``state_dir``; measure their use every ``usage_interval_s``.

        Each replica runs under an identity from ``identities``; without them it would run
        as the agent's own user, which only ``insecure_same_user`` allows (otherwise every
        start is refused, saying so). Replicas' control groups go under ``cgroup_parent``
        (None: use no cgroups).
        """
        self._dir = Path(state_dir) / "replicas"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._dir.chmod(0o700)
        self._replicas: dict[str, _Replica] = {}
        self._identities = identities
        self._insecure_same_user = insecure_same_user
        self._spawner = ThreadPoolExecutor(max_workers=2, thread_name_prefix="replica-spawn")
        self._watched: dict[int, int] = {}  # pidfd -> pid, for the loop's readers
        self._usage_interval_s = usage_interval_s
        self._sampled_at = -float("inf")
        self._cgroup_parent = cgroup_parent
        self._data = data
        self._mounts = Mounts.read()
        self._leftover: list[Cgroup] = []  # groups the kernel would not remove yet
        own = [] if cgroup_parent is None else own_groups(cgroup_parent)
        self._chain = WeightChain(
            group for path in own if (group := Cgroup.create(path, self._mounts)) is not None
        )

    def _cgroup(self, replica_id: str) -> Cgroup | None:
        """The replica's control group (made if missing), or None where cgroups are unusable."""
        if self._cgroup_parent is None:
            return None
        return Cgroup.create(f"{self._cgroup_parent}/{replica_id}", self._mounts)

    def _record_path(self, replica_id: str) -> Path:
        return self._dir / f"{replica_id}.json"

    def _log_path(self, replica_id: str) -> Path:
        return self._dir / f"{replica_id}.log"

    async def start(self, spec: ReplicaSpec, *, may_run: Callable[[], bool]) -> None:
        """Start the replica unless it exists.

        Raises:
            StartCancelled: ``may_run`` said no just before the fork.
            StartFailed: its command could not be started (missing program, say), or the
                agent may not give it an identity of its own.
        """
        if spec.replica_id in self._replicas:
            return
        identity = self._identity(spec)
        cgroup = self._cgroup(spec.replica_id)
        if cgroup is not None:
            try:
                cgroup.thaw()  # a group left frozen by a killed agent would freeze it at birth
                cgroup.limit(spec.reservation.cpu_millicores, spec.reservation.memory_mib)
            except OSError:
                cgroup.remove()
                cgroup = None
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **spec.env}
        env[PLATFORM_MARKER] = "1"  # its CPU is never a person's
        if identity is not None:
            env |= {"HOME": str(identity.home), "TMPDIR": str(identity.home)}
        if spec.token_dir is not None:
            env[TOKEN_FILE_ENV] = str(spec.token_dir / "token")
        if spec.status_dir is not None:
            env[STATUS_FILE_ENV] = str(spec.status_dir / "status")
        data = None
        if self._data is not None:
            try:
                data = self._data.folder(spec.namespace)
            except StartFailed:
                self._undo(spec.replica_id, cgroup)
                raise
            env[DATA_ENV] = str(data.path)
        if not may_run():
            self._undo(spec.replica_id, cgroup)
            raise StartCancelled("the PC stopped taking replicas before this one began")
        try:
            process = await asyncio.get_running_loop().run_in_executor(
                self._spawner, self._spawn, spec, env, cgroup, identity,
                None if data is None else data.gid,
            )  # fmt: skip
        except OSError as error:
            self._undo(spec.replica_id, cgroup)
            hint = "" if identity is None else f" (as uid {identity.uid}: may every user run it?)"
            raise StartFailed(
                f"could not start {spec.command[:1]}: {error.strerror or error}{hint}"
            ) from None
        started_at = psutil.Process(process.pid).create_time()
        replica = _Replica(spec, process.pid, started_at, cgroup, identity, process)
        self._replicas[spec.replica_id] = replica
        self._save(replica)
        self._watch(replica)

    def _identity(self, spec: ReplicaSpec) -> Identity | None:
        """The replica's own identity, its token folder handed to it.

        Raises:
            StartFailed: there is none to give, and running as the agent was not allowed.
        """
        if self._identities is None:
            if self._insecure_same_user:
                return None
            raise StartFailed(
                "this PC cannot give a replica a uid of its own (its agent does not run as "
                "root); run the agent as root, or pass --insecure-same-user to run replicas "
                "as the agent's user (never on a lab PC)"
            )
        try:
            identity = self._identities.assign(spec.replica_id, spec.namespace)
        except LookupError as error:
            raise StartFailed(str(error)) from None
        for folder in (spec.token_dir, spec.status_dir):
            if folder is not None:
                hand_over(folder, identity.uid, identity.gid)
        return identity

    def _undo(self, replica_id: str, cgroup: Cgroup | None) -> None:
        """Forget a start that never ran."""
        if cgroup is not None:
            cgroup.remove()
        if self._identities is not None:
            self._identities.release(replica_id)

    def _spawn(
        self,
        spec: ReplicaSpec,
        env: dict[str, str],
        cgroup: Cgroup | None,
        identity: Identity | None,
        data_gid: int | None,
    ) -> _Child:
        """In the helper thread: fork and exec the replica's command."""
        with self._log_path(spec.replica_id).open("ab") as log:
            return _Child(
                spec.command,
                env=env,
                cwd=None if identity is None else identity.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: _confine_child(
                    spec.reservation.memory_mib, cgroup, identity, data_gid
                ),
            )

    def _watch(self, replica: _Replica) -> None:
        """Reap the replica's process when it exits (its pidfd turns readable)."""
        assert replica.process is not None
        process, loop = replica.process, asyncio.get_running_loop()
        pidfd = os.pidfd_open(process.pid)

        def exited() -> None:
            code = process.poll()
            if code is not None:
                self._unwatch(pidfd)
                replica.exit_code, replica.paused = code, False

        self._watched[pidfd] = process.pid
        loop.add_reader(pidfd, exited)

    def _unwatch(self, pidfd: int) -> None:
        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        del self._watched[pidfd]

    def _save(self, replica: _Replica) -> None:
        spec = replica.spec
        record = {
            "replica_id": spec.replica_id,
            "namespace": spec.namespace,
            "app": spec.app,
            "image": spec.image,
            "command": list(spec.command),
            "cpu_millicores": spec.reservation.cpu_millicores,
            "memory_mib": spec.reservation.memory_mib,
            "pid": replica.pid,
            "started_at": replica.started_at,
            "cgroup": replica.cgroup is not None,
            "identity": None
            if replica.identity is None
            else {"uid": replica.identity.uid, "gid": replica.identity.gid},
        }
        staged = self._record_path(spec.replica_id).with_suffix(".tmp")
        staged.write_text(json.dumps(record))
        staged.replace(self._record_path(spec.replica_id))

    def adopt(self) -> list[ReplicaInfo]:
        """After a restart: take back the replicas still running from the state records."""
        for path in sorted(self._dir.glob("*.json")):
            record: dict[str, Any] = json.loads(path.read_text())
            spec = ReplicaSpec(
                replica_id=record["replica_id"],
                namespace=record["namespace"],
                app=record["app"],
                image=record["image"],
                command=tuple(record["command"]),
                reservation=Amount(record["cpu_millicores"], record["memory_mib"]),
            )
            cgroup = self._cgroup(spec.replica_id) if record.get("cgroup") else None
            identity = None
            if (ids := record.get("identity")) is not None and self._identities is not None:
                home = self._identities.home(spec.replica_id)
                identity = Identity(ids["uid"], ids["gid"], home)
            replica = _Replica(spec, record["pid"], record["started_at"], cgroup, identity)
            process = self._process(replica)
            if process is None:
                replica.exit_code = -1  # it ended while no agent watched; its code is lost
            else:
                with contextlib.suppress(psutil.Error):
                    replica.paused = frozen(process.pid, self._mounts)
            self._replicas[spec.replica_id] = replica
        return [self._info(replica) for replica in self._replicas.values()]

    def _process(self, replica: _Replica) -> psutil.Process | None:
        """The replica's leading process, if it still runs (and is not a recycled pid)."""
        if replica.exit_code is not None:
            return None
        try:
            process = psutil.Process(replica.pid)
            if abs(process.create_time() - replica.started_at) > 0.01:
                return None
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        return process

    def _live(self, replica_id: str) -> _Replica | None:
        replica = self._replicas.get(replica_id)
        if replica is None or self._process(replica) is None:
            return None
        return replica

    @staticmethod
    def _signal(replica: _Replica, signum: signal.Signals) -> None:
        _signal_all(replica.pid, replica.cgroup, signum)

    async def pause(self, replica_id: str) -> None:
        """Freeze every process of the replica; returns once they are frozen."""
        replica = self._live(replica_id)
        if replica is None:
            return
        replica.paused = True
        if replica.cgroup is None:
            self._signal(replica, signal.SIGSTOP)
            return
        with self._chain.raised():  # each task freezes when it next runs: let it run soon
            await self._freeze(replica_id, replica, replica.cgroup)

    async def _freeze(self, replica_id: str, replica: _Replica, cgroup: Cgroup) -> None:
        with contextlib.suppress(OSError):  # a concurrent stop removed the group
            cgroup.freeze()
        deadline = time.monotonic() + _FREEZE_TIMEOUT_S
        while not cgroup.frozen():
            if replica.stopping or not cgroup.exists():
                return  # being stopped: nothing left to wait for
            if time.monotonic() > deadline:
                log.warning("replica %s would not freeze: killed instead", replica_id)
                self._signal(replica, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    cgroup.let_die()
                return
            await asyncio.sleep(0.001)
        with contextlib.suppress(OSError):  # frozen: back to the lowest class, no budget kept
            cgroup.lowest_class()

    async def resume(self, replica_id: str) -> None:
        """Thaw a paused replica."""
        replica = self._live(replica_id)
        if replica is None:
            return
        if replica.cgroup is None:
            self._signal(replica, signal.SIGCONT)
        else:
            replica.cgroup.thaw()
        replica.paused = False

    async def stop(self, replica_id: str, grace_s: float) -> None:
        """SIGTERM, SIGKILL after ``grace_s``; SIGKILL at once if paused. Forgets it."""
        replica = self._replicas.get(replica_id)
        if replica is None:
            return
        replica.stopping = True
        if self._process(replica) is not None:
            graceful = not replica.paused and grace_s > 0
            if graceful:  # it cleans up at the lowest class, as it ran
                self._signal(replica, signal.SIGTERM)
            if not (graceful and await self._gone_within(replica, grace_s)):
                with self._chain.raised():  # a task dies when it next runs: let it run soon
                    self._signal(replica, signal.SIGKILL)
                    if replica.cgroup is not None:
                        replica.cgroup.let_die()
                    await self._gone_within(replica, 10.0)
        if replica.cgroup is not None and not replica.cgroup.remove():
            self._leftover.append(replica.cgroup)
        if self._identities is not None:
            self._identities.release(replica_id)
        del self._replicas[replica_id]
        self._record_path(replica_id).unlink(missing_ok=True)

    async def _gone_within(self, replica: _Replica, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._process(replica) is not None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def replicas(self, *, with_usage: bool = False) -> list[ReplicaInfo]:
        """Every replica with its state and, if asked, its latest CPU and memory use.

        Use is measured at most every ``usage_interval_s`` (one scan of the process table
        for all replicas); in between the latest measurement is returned.
        """
        if self._leftover:
            self._leftover = [group for group in self._leftover if not group.remove()]
        if with_usage and time.monotonic() - self._sampled_at >= self._usage_interval_s:
            self._sample_all()
        return [self._info(replica) for replica in self._replicas.values()]

    def replica_cpu_ns(self) -> dict[str, int]:
        """CPU time each live replica with a control group has used (one read each)."""
        return cpu_times_ns({rid: replica.cgroup for rid, replica in self._replicas.items()})

    def _sample_all(self) -> None:
        self._sampled_at = time.monotonic()
        children: dict[int, list[int]] = {}
        if any(replica.cgroup is None for replica in self._replicas.values()):
            for member in psutil.process_iter(["ppid"]):
                children.setdefault(member.info["ppid"], []).append(member.pid)
        for replica in self._replicas.values():
            if self._alive(replica):
                replica.usage = self._sample(replica, children)

    def _alive(self, replica: _Replica) -> bool:
        """Our own children are reaped by their watcher; adopted ones are looked up."""
        if replica.process is not None:
            return replica.exit_code is None
        return self._process(replica) is not None

    def _info(self, replica: _Replica) -> ReplicaInfo:
        spec = replica.spec
        alive = self._alive(replica)
        if not alive:
            state = ReplicaState.EXITED if replica.exit_code == 0 else ReplicaState.FAILED
        else:
            state = ReplicaState.PAUSED if replica.paused else ReplicaState.RUNNING
        return ReplicaInfo(
            replica_id=spec.replica_id,
            namespace=spec.namespace,
            app=spec.app,
            state=state,
            reservation=spec.reservation,
            usage=replica.usage if alive else ZERO,
            cpu_s=replica.meter.total_s,
            exit_code=replica.exit_code,
            log_tail=() if alive else self._log_tail(spec.replica_id),
        )

    @staticmethod
    def _sample(replica: _Replica, children: dict[int, list[int]]) -> Amount:
        """CPU rate and memory of the replica: from its cgroup, else its process tree."""
        cgroup = replica.cgroup
        cpu_ns = cgroup.cpu_usage_ns() if cgroup is not None else None
        memory = cgroup.memory_bytes() if cgroup is not None else None
        if cpu_ns is not None and memory is not None:
            cpu_s = cpu_ns / 1e9
        else:
            cpu_s, memory = 0.0, 0
            for pid in _tree(replica.pid, children):
                with contextlib.suppress(psutil.Error):
                    member = psutil.Process(pid)
                    with member.oneshot():
                        times = member.cpu_times()
                        cpu_s += times.user + times.system
                        memory += member.memory_info().rss
        millicores = replica.meter.millicores(cpu_s, time.monotonic())
        return Amount(millicores, memory // 2**20)

    async def close(self) -> None:
        """Stop watching; replicas are plain processes and keep running."""
        for pidfd in list(self._watched):
            self._unwatch(pidfd)
        self._spawner.shutdown(wait=False)

    async def read_output(self, replica_id: str, position: int, bound_bytes: int) -> Output:
        """New output from the replica's file; a file of the same size as at the last read
        (the common case: five reads a second per replica) is answered without a thread."""
        path = self._log_path(replica_id)
        try:
            if os.stat(path).st_size == position:
                return Output(b"", position)
        except FileNotFoundError:
            return Output(b"", position)
        return await asyncio.to_thread(read_file_output, path, position, bound_bytes)

    def _log_tail(self, replica_id: str) -> tuple[str, ...]:
        try:
            with self._log_path(replica_id).open(errors="replace") as log:
                return tuple(line.rstrip("\n")[:1024] for line in deque(log, _LOG_TAIL_LINES))
        except FileNotFoundError:
            return ()


def kill_recorded(record: Path, *, wait_s: float = 5.0) -> None:
    """End the replica a runtime's record names, with no agent: SIGKILL its process group
    and every process of its control group, thaw the group (frozen tasks die only once
    thawed), remove the group once empty (within ``wait_s``), and the record."""
    try:
        fields = json.loads(record.read_text())
        pid, replica_id, has_group = int(fields["pid"]), str(fields["replica_id"]), fields["cgroup"]
    except (OSError, ValueError, KeyError):
        record.unlink(missing_ok=True)
        return
    group = None
    if has_group:  # its own group, named for it (never the agent's or the machine's)
        with contextlib.suppress(OSError):
            found = Cgroup.of_pid(pid, Mounts.read())
            if all(folder.name == replica_id for folder in found.dirs.values()):
                group = found
    _signal_all(pid, group, signal.SIGKILL)
    if group is not None and group.exists():
        with contextlib.suppress(OSError):
            group.let_die()
        deadline = time.monotonic() + wait_s
        while not group.remove() and time.monotonic() < deadline:
            time.sleep(0.05)
    record.unlink(missing_ok=True)
