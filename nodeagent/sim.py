"""Simulated lab PCs: real agents on one machine, for tests, benchmarks and the demo.

Each simulated PC is a real `bus agent run` process (process runtime) with its own name,
capacity, utmp file and state folder under one simulation folder, and its own range of
replica uids (1,000 of them, from a block chosen by the folder and the PC's name, and
never shared within a simulation). Replicas' homes and tokens go under
``/var/tmp/idlecloud-sim/<folder's hash>/<node>``, a folder every replica uid can reach
whatever the simulation folder's own permissions. Run as root, as on a lab PC, every
replica gets a uid of its own; run as anyone else the agents are told
``--insecure-same-user``, and say so: their replicas then run as you. Logging a person in
writes a real utmp record into that PC's file; killing a PC kills its agent and every
replica it ran, as pulling the plug would. ``sim.json`` in the folder remembers the PCs so
separate `bus sim` commands act on the same simulation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from nodeagent.runtime.cgroup import Cgroup, Mounts
from nodeagent.runtime.container import LABEL_PREFIX, holder_path
from nodeagent.runtime.hierarchy import remove_everywhere, replica_groups, replica_parent
from nodeagent.runtime.identity import UidRange, uid_block
from nodeagent.runtime.process import kill_recorded
from nodeagent.utmp import read_sessions, write_login, write_logout

__all__ = ["THESIS_NODES", "SimNode", "Simulation", "node_containers", "remove_containers"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SimNode:
    """One simulated PC: its name and what it offers."""

    name: str
    cpu_millicores: int
    memory_mib: int


#: The four lab PCs of the thesis's experiments (Edge 8 cores, the others 4).
THESIS_NODES = (
    SimNode("edge", 8000, 16384),
    SimNode("ninja", 4000, 8192),
    SimNode("jonathan", 4000, 8192),
    SimNode("penguin", 4000, 8192),
)


def node_containers(node: str) -> list[str]:
    """The ids of the containers a PC's Docker runtime made (found by their node label)."""
    return subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL_PREFIX}node={node}"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip


def remove_containers(node: str) -> None:
    """Kill and remove a PC's containers (the Docker runtime's replicas outlive an agent),
    and the groups that held them."""
    if listed := node_containers(node):
        parents = subprocess.run(
            ["docker", "inspect", "-f", "{{.HostConfig.CgroupParent}}", *listed],
            capture_output=True, text=True, timeout=60, check=False,
        ).stdout.split()  # fmt: skip
        mounts = Mounts.read()
        holders = [path for parent in parents if (path := holder_path(parent)) is not None]
        for holder in holders:  # dockerd kills a paused container by thawing its own group
            with contextlib.suppress(OSError):
                Cgroup.named(holder, mounts).thaw()
        subprocess.run(["docker", "rm", "-f", *listed], capture_output=True, timeout=120,
                       check=False)  # fmt: skip
        for holder in holders:
            remove_everywhere(holder, mounts)


class Simulation:
    """The simulated PCs living under one folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._record = self.folder / "sim.json"
        self._spawned: dict[str, subprocess.Popen[bytes]] = {}  # reaped by kill() and down()

    def _load(self) -> dict[str, dict[str, object]]:
        if not self._record.exists():
            return {}
        loaded: dict[str, dict[str, object]] = json.loads(self._record.read_text())
        return loaded

    def _save(self, nodes: dict[str, dict[str, object]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        staged = self._record.with_suffix(".tmp")
        staged.write_text(json.dumps(nodes, indent=2))
        staged.replace(self._record)

    def utmp(self, name: str) -> Path:
        """The utmp file of PC ``name``."""
        return self.folder / name / "utmp"

    def state_dir(self, name: str) -> Path:
        """The state folder of PC ``name``."""
        return self.folder / name / "state"

    def _replica_root(self) -> Path:
        digest = hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:12]
        return Path("/var/tmp/idlecloud-sim") / digest

    def replica_dir(self, name: str) -> Path:
        """Where PC ``name``'s replicas have their homes and tokens."""
        return self._replica_root() / name

    def up(
        self,
        url: str,
        nodes: tuple[SimNode, ...] = THESIS_NODES,
        *,
        runtime: str = "process",
        foreign_load: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> list[str]:
        """Start an agent for each PC not already running; return the names started.

        Args:
            url: the broker URL the agents connect to.
            nodes: the PCs to simulate.
            runtime: how their replicas run, ``process`` or ``docker``.
            foreign_load: count the machine's other CPU load as a person at every PC. Off
                by default: the PCs share this machine, whose load (the researcher's own
                client, a build) is no simulated person's.
            extra_args: more `bus agent run` options for every agent (policy values, say).
        """
        known = self._load()
        started = []
        same_user = () if os.geteuid() == 0 else ("--insecure-same-user",)
        if same_user:
            logger.warning(
                "simulated PCs run their replicas as your own user (--insecure-same-user): "
                "run as root to give each a uid of its own"
            )
        for spec in nodes:
            if spec.name in known and self._alive(known[spec.name]):
                continue
            taken = [UidRange.parse(str(entry["replica_uids"])) for name, entry in known.items()
                     if name != spec.name and "replica_uids" in entry]  # fmt: skip
            uids = str(uid_block(f"{self.folder.resolve()}/{spec.name}", taken))
            (self.folder / spec.name / "input").mkdir(parents=True, exist_ok=True)
            self.utmp(spec.name).touch()
            log = (self.folder / spec.name / "agent.log").open("ab")
            process = subprocess.Popen(
                [
                    sys.executable, "-m", "idlecloud", "agent", "run", "--url", url,
                    "--node", spec.name, "--utmp", str(self.utmp(spec.name)),
                    "--state-dir", str(self.state_dir(spec.name)),
                    "--replica-dir", str(self.replica_dir(spec.name)), "--replica-uids", uids,
                    *same_user,
                    # its own (empty) input folder: the host's keyboard is no PC's person
                    "--input-dir", str(self.folder / spec.name / "input"),
                    "--cpu-millicores", str(spec.cpu_millicores),
                    "--memory-mib", str(spec.memory_mib),
                    "--reserve-cpu-millicores", "0", "--reserve-memory-mib", "0",
                    "--platform-user", "rabbitmq",  # the broker shares this machine
                    "--replica-url", url,  # replicas use the simulation's own credentials
                    "--runtime", runtime,
                    "--foreign-load" if foreign_load else "--no-foreign-load", *extra_args,
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            log.close()
            self._spawned[spec.name] = process
            known[spec.name] = {
                **asdict(spec),
                "runtime": runtime,
                "replica_uids": uids,
                "pid": process.pid,
                "started_at": psutil.Process(process.pid).create_time(),
            }
            started.append(spec.name)
        self._save(known)
        return started

    @staticmethod
    def _alive(entry: dict[str, object]) -> bool:
        try:
            process = psutil.Process(int(str(entry["pid"])))
            started_at = float(str(entry["started_at"]))
            return (
                abs(process.create_time() - started_at) < 0.01
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False

    def status(self) -> dict[str, dict[str, object]]:
        """Every simulated PC with whether its agent runs and how many people are logged in."""
        report = {}
        for name, entry in self._load().items():
            report[name] = {
                **entry,
                "agent": "running" if self._alive(entry) else "down",
                "sessions": len(read_sessions(self.utmp(name))),
            }
        return report

    def _entry(self, name: str) -> dict[str, object]:
        known = self._load()
        if name not in known:
            raise KeyError(f"no simulated PC named {name!r}; known: {sorted(known)}")
        return known[name]

    def login(self, name: str, user: str = "student") -> None:
        """A person sits down at PC ``name`` (a real utmp login record).

        Raises:
            KeyError: there is no such simulated PC.
        """
        self._entry(name)
        write_login(self.utmp(name), user, "tty7")

    def logout(self, name: str) -> None:
        """The person at PC ``name`` leaves.

        Raises:
            KeyError: there is no such simulated PC.
        """
        self._entry(name)
        write_logout(self.utmp(name), "tty7")

    def kill(self, name: str) -> None:
        """Pull the plug on PC ``name``: its agent and every replica die at once.

        Raises:
            KeyError: there is no such simulated PC.
        """
        entry = self._entry(name)
        if self._alive(entry):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(str(entry["pid"])), signal.SIGKILL)
        spawned = self._spawned.pop(name, None)
        if spawned is not None:
            spawned.wait(timeout=10)
        self._kill_replicas(name)
        if entry.get("runtime") == "docker":
            remove_containers(name)
        self._remove_node_group(name)

    @staticmethod
    def _node_group(name: str) -> str:
        """The folder its agent makes for its replicas' groups (the agents run outside
        systemd, in this process's group, so where is known)."""
        own = Path("/proc/self/cgroup").read_text()
        return replica_parent(own, name, unified=Mounts.read().unified).path

    def _remove_node_group(self, name: str) -> None:
        Cgroup.named(self._node_group(name), Mounts.read()).remove()

    def left_behind(self, names: Iterable[str]) -> list[str]:
        """What PCs ``names`` left on this machine after :meth:`down` or :meth:`kill`:
        their replicas' groups (in every hierarchy), the processes in them, and their
        containers. Empty when they cleaned up after themselves."""
        left: list[str] = []
        for name in names:
            for group in replica_groups(Mounts.read(), [self._node_group(name)]):
                procs = (group / "cgroup.procs").read_text().split()
                left.append(f"group {group}" + (f" with processes {procs}" if procs else ""))
            if shutil.which("docker") is not None:  # no Docker, no containers
                with contextlib.suppress(subprocess.CalledProcessError):  # dockerd is down
                    left.extend(f"container {c} of {name}" for c in node_containers(name))
        return left

    def _kill_replicas(self, name: str) -> None:
        for record in (self.state_dir(name) / "replicas").glob("*.json"):
            kill_recorded(record)

    def down(self, grace_s: float = 10.0) -> None:
        """Stop every simulated PC: agents get SIGTERM, then everything is killed."""
        known = self._load()
        for entry in known.values():
            if self._alive(entry):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(str(entry["pid"])), signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for spawned in self._spawned.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                spawned.wait(timeout=max(0.0, deadline - time.monotonic()))
        while any(self._alive(e) for e in known.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for name in known:
            self.kill(name)
        self._record.unlink(missing_ok=True)
        shutil.rmtree(self._replica_root(), ignore_errors=True)
