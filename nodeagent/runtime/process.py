"""The process runtime: replicas as local process groups, for PCs without Docker.

Each replica runs in its own session (so its whole process tree is one process group),
at nice 19 so the person's programs always come first. Where the cgroup tree is writable
(root on v1 or v2) each replica gets its own control group, joined before ``exec``, with
a CPU quota and memory limit equal to its reservation at the lowest CPU weight; pausing
freezes the group (the kernel's freezer, which no child can escape) and waits until it is
frozen. Elsewhere its writable private memory is capped by ``RLIMIT_DATA`` and pausing
stops its process group (SIGSTOP). Stopping sends SIGTERM and SIGKILL after the grace
period; a paused replica gets SIGKILL at once, since a SIGTERM would need it to run first.

A small JSON record per replica in the agent's state folder lets a restarted agent adopt
the replicas still running (matched by pid and start time, so a recycled pid is never
mistaken for a replica) instead of leaking or duplicating them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from nodeagent.load import PLATFORM_MARKER
from nodeagent.runtime.cgroup import Cgroup, Mounts
from nodeagent.runtime.spec import CpuMeter, ReplicaInfo, ReplicaSpec, StartFailed
from nodeagent.tokens import TOKEN_FILE_ENV
from schemas import ReplicaState, Resources

__all__ = ["ProcessRuntime", "frozen"]

log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 20
_FREEZE_TIMEOUT_S = 5.0


@dataclass
class _Replica:
    spec: ReplicaSpec
    pid: int
    started_at: float
    cgroup: Cgroup | None = None
    process: asyncio.subprocess.Process | None = None
    paused: bool = False
    exit_code: int | None = None
    meter: CpuMeter = field(default_factory=CpuMeter)
    usage: Resources = field(default_factory=Resources)
    reaper: asyncio.Task[None] | None = None


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


def _limit_child(memory_mib: int, cgroup: Cgroup | None) -> None:
    """Runs in the child between fork and exec: lowest CPU priority, bounded memory."""
    os.nice(19)
    if cgroup is not None:
        cgroup.join(os.getpid())
    else:
        limit = memory_mib * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


class ProcessRuntime:
    """Replicas as process groups at nice 19; see the module's header."""

    name = "process"

    def __init__(
        self,
        state_dir: str | Path,
        *,
        usage_interval_s: float = 5.0,
        cgroup_parent: str | None = "idlecloud",
    ) -> None:
        """Keep replicas' records in ``state_dir``; measure their use every ``usage_interval_s``.

        Replicas' control groups go under ``cgroup_parent`` (None: use no cgroups).
        """
        self._dir = Path(state_dir) / "replicas"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._replicas: dict[str, _Replica] = {}
        self._usage_interval_s = usage_interval_s
        self._sampled_at = -float("inf")
        self._cgroup_parent = cgroup_parent
        self._mounts = Mounts.read()

    def _cgroup(self, replica_id: str) -> Cgroup | None:
        """The replica's control group (made if missing), or None where cgroups are unusable."""
        if self._cgroup_parent is None:
            return None
        return Cgroup.create(f"{self._cgroup_parent}/{replica_id}", self._mounts)

    def _record_path(self, replica_id: str) -> Path:
        return self._dir / f"{replica_id}.json"

    def _log_path(self, replica_id: str) -> Path:
        return self._dir / f"{replica_id}.log"

    async def start(self, spec: ReplicaSpec) -> None:
        """Start the replica unless it exists.

        Raises:
            StartFailed: its command could not be started (missing program, say).
        """
        if spec.replica_id in self._replicas:
            return
        cgroup = self._cgroup(spec.replica_id)
        if cgroup is not None:
            try:
                cgroup.thaw()  # a group left frozen by a killed agent would freeze it at birth
                cgroup.limit(spec.cpu_millicores, spec.memory_mib)
            except OSError:
                cgroup.remove()
                cgroup = None
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **spec.env}
        env[PLATFORM_MARKER] = "1"  # its CPU is never a person's
        if spec.token_dir is not None:
            env[TOKEN_FILE_ENV] = str(spec.token_dir / "token")
        try:
            with self._log_path(spec.replica_id).open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    *spec.command,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=lambda: _limit_child(spec.memory_mib, cgroup),
                )
        except OSError as error:
            if cgroup is not None:
                cgroup.remove()
            raise StartFailed(
                f"could not start {spec.command[:1]}: {error.strerror or error}"
            ) from None
        started_at = psutil.Process(process.pid).create_time()
        replica = _Replica(spec, process.pid, started_at, cgroup, process)
        self._replicas[spec.replica_id] = replica
        self._save(replica)
        replica.reaper = asyncio.create_task(self._reap(replica))

    def _save(self, replica: _Replica) -> None:
        spec = replica.spec
        record = {
            "replica_id": spec.replica_id,
            "namespace": spec.namespace,
            "app": spec.app,
            "image": spec.image,
            "command": list(spec.command),
            "cpu_millicores": spec.cpu_millicores,
            "memory_mib": spec.memory_mib,
            "pid": replica.pid,
            "started_at": replica.started_at,
            "cgroup": replica.cgroup is not None,
        }
        staged = self._record_path(spec.replica_id).with_suffix(".tmp")
        staged.write_text(json.dumps(record))
        staged.replace(self._record_path(spec.replica_id))

    async def _reap(self, replica: _Replica) -> None:
        assert replica.process is not None
        replica.exit_code = await replica.process.wait()
        replica.paused = False

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
                cpu_millicores=record["cpu_millicores"],
                memory_mib=record["memory_mib"],
            )
            cgroup = self._cgroup(spec.replica_id) if record.get("cgroup") else None
            replica = _Replica(spec, record["pid"], record["started_at"], cgroup)
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
        """Signal its process group and, with a cgroup, every process in the group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(replica.pid, signum)
        for pid in replica.cgroup.pids() if replica.cgroup is not None else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    async def pause(self, replica_id: str) -> None:
        """Freeze every process of the replica; returns once they are frozen."""
        replica = self._live(replica_id)
        if replica is None:
            return
        if replica.cgroup is None:
            self._signal(replica, signal.SIGSTOP)
        else:
            replica.cgroup.freeze()
            deadline = time.monotonic() + _FREEZE_TIMEOUT_S
            while not replica.cgroup.frozen():
                if time.monotonic() > deadline:
                    log.warning("replica %s is still freezing", replica_id)
                    break
                await asyncio.sleep(0.001)
        replica.paused = True

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
        if self._process(replica) is not None:
            first = signal.SIGKILL if replica.paused or grace_s <= 0 else signal.SIGTERM
            self._signal(replica, first)
            if replica.cgroup is not None and first is signal.SIGKILL:
                replica.cgroup.thaw()  # frozen tasks die only once thawed
            if not await self._gone_within(replica, grace_s):
                self._signal(replica, signal.SIGKILL)
                await self._gone_within(replica, 10.0)
        if replica.cgroup is not None:
            replica.cgroup.remove()
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
        if with_usage and time.monotonic() - self._sampled_at >= self._usage_interval_s:
            self._sample_all()
        return [self._info(replica) for replica in self._replicas.values()]

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
            reservation=Resources(cpu_millicores=spec.cpu_millicores, memory_mib=spec.memory_mib),
            usage=replica.usage if alive else Resources(),
            exit_code=replica.exit_code,
            log_tail=() if alive else self._log_tail(spec.replica_id),
        )

    @staticmethod
    def _sample(replica: _Replica, children: dict[int, list[int]]) -> Resources:
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
        return Resources(cpu_millicores=millicores, memory_mib=memory // 2**20)

    async def close(self) -> None:
        """Nothing to release: replicas are plain processes and keep running."""

    def _log_tail(self, replica_id: str) -> tuple[str, ...]:
        try:
            with self._log_path(replica_id).open(errors="replace") as log:
                return tuple(line.rstrip("\n")[:1024] for line in deque(log, _LOG_TAIL_LINES))
        except FileNotFoundError:
            return ()
