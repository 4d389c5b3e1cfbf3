"""The Docker runtime: replicas as containers, confined, labelled and adopted by node.

Every container is created (:func:`~nodeagent.runtime.container.container_config`) with
labels naming its node, namespace, app and replica (and its reservation), a CPU quota
and memory limit equal to the reservation (no swap), a pids limit, every capability
dropped, ``no-new-privileges``, an unprivileged user, the lowest
CPU weight and, once it started, the lowest scheduling class (``SCHED_IDLE`` for every
thread of its cgroup, set again at each use sample for any thread that was quicker than
the first setting; ``cpu.idle`` on cgroup v2), an OOM score that sacrifices it before
the person's programs, the configured network mode, and the replica's token folder
mounted read-only. Its name, ``idlecloud-<node>-<replica>``, makes a second start of the
same replica a no-op.

Each container's own group sits in a holder group of its own
(``CgroupParent=/idlecloud-docker/<name>``). A pause freezes the holder, as the process
runtime freezes a replica's group (its tasks woken at a real-time class to freeze at
once), and then tells dockerd (``docker pause``: runc sees the container's own group as
running, frozen only through its parent, freezes it at once and dockerd records it
paused). Through ``docker pause`` alone a freeze took up to 0.82 s after two CPU hogs
began (the holder's: 0.11 s): dockerd, containerd and runc wait behind the person's work,
and runc cannot wake the tasks at a real-time class (it thaws a group it could not freeze
in about 50 tries, and tries again: a woken task would then run at it). Freezing the
container's own group directly would make runc refuse to pause or unpause it. A holder
that does not freeze within a second lets go, and runc's pause is tried; it sometimes
fails on a busy container ("unable to freeze") and is tried again, and a container that
still will not freeze is killed: a replica never runs on beside a person. A resume tells
dockerd first, then thaws the holder; a stop removes the holder too (Docker makes it in
every hierarchy and never removes it).

A start creates the container, asks the agent's ``may_run`` once more, and only then
starts it. Its token
folder is handed to the container's (numeric) user. Stopping a running container sends
SIGTERM, then SIGKILL after the grace period; a paused one gets SIGKILL at once, since
``docker stop`` would thaw it first and let it run. A stopped replica's container is
removed. Use is read from the container's cgroup, not from ``docker stats`` (which waits
a second per container). The runtime only ever lists, touches or adopts containers
labelled with its own node's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiodocker

from nodeagent.runtime import DOCKER_NETWORK, DOCKER_USER
from nodeagent.runtime.cgroup import Cgroup, Mounts, cpu_times_ns
from nodeagent.runtime.container import (
    DOCKER_CGROUP_PARENT,
    container_config,
    holder_path,
    label,
)
from nodeagent.runtime.data import DataFolders
from nodeagent.runtime.hierarchy import WeightChain, own_groups, remove_everywhere
from nodeagent.runtime.output import Output, docker_output
from nodeagent.runtime.spec import CpuMeter, ReplicaInfo, ReplicaSpec, StartCancelled, StartFailed
from nodeagent.tokens import hand_over
from schemas import ZERO, Amount, ReplicaState

__all__ = ["DockerRuntime"]

log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 20
#: How long a pause waits for the holder to freeze a container before runc tries.
_HOLD_TIMEOUT_S, _HOLD_POLL_S = 1.0, 0.001
#: Tries at ``docker pause`` before a replica that will not freeze is killed instead.
_PAUSE_ATTEMPTS = 4
_STATES = {"running": ReplicaState.RUNNING, "paused": ReplicaState.PAUSED}


@dataclass
class _Seen:
    """What the runtime keeps of one container between heartbeats."""

    cgroup: Cgroup | None = None
    meter: CpuMeter = field(default_factory=CpuMeter)
    usage: Amount = ZERO
    ended: tuple[int, tuple[str, ...]] | None = None  # (exit code, log tail) once it ended
    #: Raised to a normal class to freeze or die: samples leave it there till a resume.
    boosted: bool = False
    #: The group of ours holding its own, to freeze it by (None: none, or not looked up).
    holder: Cgroup | None = None


class DockerRuntime:
    """Replicas as Docker containers; see the module's header."""

    name = "docker"

    def __init__(
        self,
        node: str,
        *,
        network_mode: str = DOCKER_NETWORK,
        user: str = DOCKER_USER,
        pids_limit: int = 512,
        usage_interval_s: float = 5.0,
        docker_url: str | None = None,
        data: DataFolders | None = None,
    ) -> None:
        """Run ``node``'s replicas as ``user`` on ``network_mode`` through the local dockerd.

        Raises:
            ValueError: ``user`` is not a numeric, non-root ``uid:gid``.
        """
        uid, _, gid = user.partition(":")
        if not (uid.isdigit() and gid.isdigit()) or int(uid) == 0 or int(gid) == 0:
            raise ValueError(
                f"docker user {user!r}: give a numeric uid:gid, not root (65534:65534)"
            )
        self.node = node
        self.network_mode = network_mode
        self.user = user
        self._owner = (int(uid), int(gid))  # who may read a replica's token folder
        self.pids_limit = pids_limit
        self._docker_url = docker_url
        self._data = data
        self._docker: aiodocker.Docker | None = None
        self._usage_interval_s = usage_interval_s
        self._sampled_at = -float("inf")
        self._seen: dict[str, _Seen] = {}  # replica id -> what we know of its container
        self._mounts = Mounts.read()
        self._parent: str | None = None  # where containers' groups go (None: not asked yet)
        self._parent_asked = asyncio.Lock()
        self._chain = WeightChain(())

    @property
    def docker(self) -> aiodocker.Docker:
        """The Docker client, made on first use (it needs a running event loop)."""
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self._docker_url)
        return self._docker

    async def close(self) -> None:
        """Close the connection to dockerd; containers keep running."""
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    def container_name(self, replica_id: str) -> str:
        """The container's name: unique per node and replica."""
        return f"idlecloud-{self.node}-{replica_id}"

    async def _ensure_image(self, image: str) -> None:
        """Pull ``image`` unless it is present, logging progress every few seconds."""
        with contextlib.suppress(aiodocker.DockerError):
            await self.docker.images.inspect(image)
            return
        log.info("pulling %s", image)
        last_report = time.monotonic()
        try:
            async for progress in self.docker.images.pull(image, stream=True):
                if "error" in progress:
                    raise StartFailed(f"cannot pull {image}: {progress['error']}")
                if time.monotonic() - last_report > 2.0:
                    last_report = time.monotonic()
                    log.info("pulling %s: %s", image, progress.get("progress", progress))
        except aiodocker.DockerError as error:
            raise StartFailed(f"cannot pull {image}: {error.message}") from None

    async def _cgroup_parent(self) -> str:
        """Where containers' groups go: with the ``cgroupfs`` driver, under one group of
        the agent's own at the lowest weight (:class:`WeightChain`; one for every node on
        the machine, as Docker's own ``/docker``: Docker makes it in every hierarchy and
        never removes it); with the ``systemd`` driver, where Docker puts them ("": its
        slice's weight is systemd's to set, e.g. ``CPUWeight=idle``). Concurrent first
        starts wait for the one answer: a start that went ahead would land under
        ``/docker``, at a normal weight beside the person's processes."""
        async with self._parent_asked:
            if self._parent is None:
                info = await self.docker.system.info()
                if info.get("CgroupDriver") == "cgroupfs":
                    own = own_groups(DOCKER_CGROUP_PARENT)
                    self._chain = WeightChain(
                        group for path in own if (group := Cgroup.create(path, self._mounts))
                    )
                    self._parent = f"/{DOCKER_CGROUP_PARENT}"
                else:
                    log.warning("dockerd's %s cgroup driver: replicas' containers weigh only "
                                "among Docker's; give its slice CPUWeight=idle",
                                info.get("CgroupDriver"))  # fmt: skip
                    self._parent = ""
            return self._parent

    async def start(self, spec: ReplicaSpec, *, may_run: Callable[[], bool]) -> None:
        """Create and start the replica's container unless it exists.

        ``may_run`` is asked between creating the container and starting it: a person who
        arrived meanwhile means it is removed unstarted.

        Raises:
            StartCancelled: ``may_run`` said no.
            StartFailed: the image cannot be had or dockerd refused the container.
        """
        name = self.container_name(spec.replica_id)
        with contextlib.suppress(aiodocker.DockerError):
            await self.docker.containers.get(name)
            return  # idempotent: it exists already
        await self._ensure_image(spec.image)
        for folder in (spec.token_dir, spec.status_dir):
            if folder is not None:
                hand_over(folder, *self._owner)
        try:
            parent = await self._cgroup_parent()  # its own group in ours, to freeze it by
            config = container_config(
                spec, node=self.node, user=self.user, network_mode=self.network_mode,
                pids_limit=self.pids_limit, data=self._data,
                cgroup_parent=parent and f"{parent}/{name}",
            )  # fmt: skip
            container = await self.docker.containers.create(config, name=name)
            if not may_run():
                await container.delete(force=True)
                raise StartCancelled("the PC stopped taking replicas before this one began")
            await container.start()
            seen = self._seen.setdefault(spec.replica_id, _Seen())
            await self._set_class(container, seen, lowest=True)
            if seen.holder is not None:
                with contextlib.suppress(OSError):  # it ended already
                    seen.holder.weigh(lowest=True)  # among the other containers' holders
        except aiodocker.DockerError as error:
            if error.status == 409:
                return  # a concurrent start of the same replica won
            with contextlib.suppress(aiodocker.DockerError):
                await self.docker.containers.container(name).delete(force=True)
            raise StartFailed(f"docker refused {spec.image}: {error.message}") from None

    async def _own(self, replica_id: str) -> Any | None:
        """The replica's container, only if it is labelled with this node's name."""
        try:
            container = await self.docker.containers.get(self.container_name(replica_id))
        except aiodocker.DockerError:
            return None
        if container["Config"]["Labels"].get(label("node")) != self.node:
            return None
        return container

    async def pause(self, replica_id: str) -> None:
        """Freeze the container (idempotent).

        A replica already listed under this node's label is paused by name at once,
        without a look-up first: on a person's arrival every round trip counts.
        """
        container: Any
        if replica_id in self._seen:
            container = self.docker.containers.container(self.container_name(replica_id))
        else:
            container = await self._own(replica_id)
            if container is None or not container["State"]["Running"]:
                return
        seen = self._seen.setdefault(replica_id, _Seen())
        await self._set_class(container, seen, lowest=False)  # a task freezes when it next runs
        with self._chain.raised():
            if seen.holder is not None and seen.cgroup is not None:
                await self._hold(seen.holder, seen.cgroup)
            await self._pause(replica_id, container)  # dockerd's record (at once if held)

    def _holder(self, details: Any) -> Cgroup | None:
        """The group of ours that holds a container's own (``CgroupParent``), if it has one
        (not with the ``systemd`` driver, nor for a container from before holders)."""
        path = holder_path(details["HostConfig"]["CgroupParent"])
        return None if path is None else Cgroup.named(path, self._mounts)

    async def _hold(self, holder: Cgroup, group: Cgroup) -> None:
        """Freeze the container's tasks through its holder, as the process runtime does,
        and put them back at the lowest class once frozen. Not frozen within a second, the
        holder lets go, and runc's pause tries (as for a container from before holders)."""
        with contextlib.suppress(OSError):
            holder.freeze(below=group)
            for _ in range(round(_HOLD_TIMEOUT_S / _HOLD_POLL_S)):
                if holder.frozen():
                    group.lowest_class()
                    holder.lowest_class()  # its real-time budget back
                    return
                await asyncio.sleep(_HOLD_POLL_S)
            group.boost()  # not at a real-time class while runc's tries thaw it between them
            holder.thaw()

    async def _pause(self, replica_id: str, container: Any) -> None:
        for attempt in range(_PAUSE_ATTEMPTS):
            try:
                await container.pause()
                return
            except aiodocker.DockerError as error:
                if error.status in (404, 409):  # gone, paused or ended already
                    return
                # runc may fail to freeze a busy container ("unable to freeze"): retry
                log.warning("pausing %s failed (%s), try %d", replica_id, error.message, attempt)
                await asyncio.sleep(0.01 * 2**attempt)
        log.warning("replica %s could not be frozen: killed instead", replica_id)
        with contextlib.suppress(aiodocker.DockerError):
            await container.kill(signal="SIGKILL")

    async def resume(self, replica_id: str) -> None:
        """Thaw the container (idempotent): dockerd's record, then its holder."""
        container = await self._own(replica_id)
        if container is None:
            return
        if container["State"]["Paused"]:
            await self._set_class(
                container, self._seen.setdefault(replica_id, _Seen()), lowest=True
            )
            with contextlib.suppress(aiodocker.DockerError):
                await container.unpause()
        if (holder := self._holder(container)) is not None:
            with contextlib.suppress(OSError):  # gone meanwhile
                holder.thaw()

    async def stop(self, replica_id: str, grace_s: float) -> None:
        """SIGTERM, SIGKILL after ``grace_s`` (at once if paused), then remove it."""
        container = await self._own(replica_id)
        if container is None:
            return
        state = container["State"]
        holder = self._holder(container)
        held = holder is not None and holder.frozen()  # dockerd may not know (a failed pause)
        kill = state["Paused"] or held or (state["Running"] and grace_s <= 0)
        if kill:  # a task dies of SIGKILL when it next runs: let it run soon
            await self._set_class(
                container, self._seen.setdefault(replica_id, _Seen()), lowest=False
            )
        with self._chain.raised() if kill else contextlib.nullcontext():
            if held and holder is not None:  # dockerd's kill thaws the container's own group
                with contextlib.suppress(OSError):  # (runc's pause froze it too), then waits
                    holder.thaw()  # up to 10 s for its end: it must not find it held
            with contextlib.suppress(aiodocker.DockerError):  # 409: it ended meanwhile
                if kill:
                    await container.kill(signal="SIGKILL")
                elif state["Running"]:  # it cleans up at the lowest class, as it ran
                    await container.stop(t=max(1, round(grace_s)))
            with contextlib.suppress(aiodocker.DockerError):  # 404: removed meanwhile
                await container.delete(force=True)
        if (path := holder_path(container["HostConfig"]["CgroupParent"])) is not None:
            remove_everywhere(path, self._mounts)
        self._seen.pop(replica_id, None)

    async def replicas(self, *, with_usage: bool = False) -> list[ReplicaInfo]:
        """Every container labelled with this node, with its state and, if asked, its use.

        Use is read from the cgroups at most every ``usage_interval_s``; in between the
        latest reading is returned.
        """
        listed = await self.docker.containers.list(
            all=True, filters={"label": [f"{label('node')}={self.node}"]}
        )
        sample = with_usage and time.monotonic() - self._sampled_at >= self._usage_interval_s
        if sample:
            self._sampled_at = time.monotonic()
        current = {container["Labels"][label("replica")] for container in listed}
        for gone in set(self._seen) - current:
            del self._seen[gone]
        found = [await self._info(container, sample) for container in listed]
        return [info for info in found if info is not None]

    async def _info(self, container: Any, sample: bool) -> ReplicaInfo | None:
        """The replica a listed container is, or None if it is being removed meanwhile."""
        labels: dict[str, str] = container["Labels"]
        seen = self._seen.setdefault(labels[label("replica")], _Seen())
        state = _STATES.get(container["State"])
        if state is None and container["State"] in ("created", "restarting"):
            state = ReplicaState.STARTING
        exit_code: int | None = None
        log_tail: tuple[str, ...] = ()
        if state is None:  # exited or dead: its code and last lines never change again
            if seen.ended is None:
                try:
                    seen.ended = await self._ending(container)
                except aiodocker.DockerError:  # 404, or 409 marked for removal: it is going
                    return None
            exit_code, log_tail = seen.ended
            state = ReplicaState.EXITED if exit_code == 0 else ReplicaState.FAILED
        elif sample:
            await self._sample(container, seen)
        return ReplicaInfo(
            replica_id=labels[label("replica")],
            namespace=labels[label("namespace")],
            app=labels[label("app")],
            state=state,
            reservation=Amount(
                int(labels[label("cpu-millicores")]), int(labels[label("memory-mib")])
            ),
            usage=seen.usage if exit_code is None else ZERO,
            cpu_s=seen.meter.total_s,
            exit_code=exit_code,
            log_tail=log_tail,
        )

    async def read_output(self, replica_id: str, position: int, bound_bytes: int) -> Output:
        """Docker keeps the output (its ``json-file`` options bound it); ``position`` is
        the newest line's time, in nanoseconds."""
        del bound_bytes
        container = await self._own(replica_id)
        if container is None:
            return Output(b"", position)
        try:
            lines = await container.log(stdout=True, stderr=True, timestamps=True,
                                        since=position // 1_000_000_000)  # fmt: skip
        except aiodocker.DockerError:  # it went meanwhile
            return Output(b"", position)
        return docker_output(lines, position)

    async def _ending(self, container: Any) -> tuple[int, tuple[str, ...]]:
        details = await container.show()
        lines = await container.log(stdout=True, stderr=True, tail=_LOG_TAIL_LINES)
        tail = "".join(lines).splitlines()[-_LOG_TAIL_LINES:]
        code = max(-255, min(255, int(details["State"]["ExitCode"])))
        return code, tuple(line[:1024] for line in tail)

    async def _find_cgroup(self, container: Any, seen: _Seen) -> None:
        """Look up the cgroup of a running container's first process."""
        details = await container.show()
        seen.holder = self._holder(details)
        with contextlib.suppress(OSError):  # it ended already
            seen.cgroup = Cgroup.of_pid(details["State"]["Pid"], self._mounts)

    async def _set_class(
        self, container: Any, seen: _Seen, *, lowest: bool, sampling: bool = False
    ) -> None:
        """Its cgroup's threads at the lowest scheduling class (at its start, and again at
        each sample: a thread quicker than the first setting did not inherit it), or at a
        normal one (:meth:`Cgroup.boost`) until a resume lowers it (a sample leaves it); the
        cgroup is looked up once."""
        if seen.cgroup is None:
            await self._find_cgroup(container, seen)
        if sampling and seen.boosted:  # a sample amid a pause must not starve the freeze
            return
        seen.boosted = not lowest
        if seen.cgroup is not None:
            with contextlib.suppress(OSError):  # it ended meanwhile
                (seen.cgroup.lowest_class if lowest else seen.cgroup.boost)()

    def replica_cpu_ns(self) -> dict[str, int]:
        """CPU time each container whose cgroup was found has used (one read each)."""
        return cpu_times_ns({rid: seen.cgroup for rid, seen in self._seen.items()})

    async def _sample(self, container: Any, seen: _Seen) -> None:
        await self._set_class(container, seen, lowest=True, sampling=True)
        if seen.cgroup is None:
            return
        cpu_ns = seen.cgroup.cpu_usage_ns()
        memory = seen.cgroup.memory_bytes()
        if cpu_ns is None or memory is None:
            seen.cgroup = None  # it restarted or ended: look it up again next time
            return
        millicores = seen.meter.millicores(cpu_ns / 1e9, time.monotonic())
        seen.usage = Amount(millicores, memory // 2**20)
