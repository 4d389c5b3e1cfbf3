"""What a replica's container is made with: labels, limits, confinement and mounts.

The labels name the container's node, namespace, app and replica, and its reservation;
the Docker runtime lists and adopts containers by them. ``CgroupParent`` is the holder
group the runtime freezes the container by (:mod:`nodeagent.runtime.docker`).
"""

from __future__ import annotations

from typing import Any

from nodeagent.load import PLATFORM_MARKER
from nodeagent.runtime.cgroup import CPU_PERIOD_US
from nodeagent.runtime.data import DATA_ENV, DOCKER_DATA, DataFolders
from nodeagent.runtime.spec import ReplicaSpec
from nodeagent.status import STATUS_FILE_ENV, STATUS_MOUNT
from nodeagent.tokens import MOUNT_POINT, TOKEN_FILE_ENV

__all__ = ["DOCKER_CGROUP_PARENT", "LABEL_PREFIX", "container_config", "holder_path", "label"]

LABEL_PREFIX = "org.idlecloud."
#: The group (under each hierarchy's root) replicas' containers go in, at the lowest weight.
DOCKER_CGROUP_PARENT = "idlecloud-docker"


def holder_path(cgroup_parent: str | None) -> str | None:
    """The holder group a container's ``CgroupParent`` names, relative to each hierarchy's
    root, or None (the ``systemd`` driver's, or a container from before holders)."""
    if not cgroup_parent or not cgroup_parent.startswith(f"/{DOCKER_CGROUP_PARENT}/"):
        return None
    return cgroup_parent.lstrip("/")


def label(key: str) -> str:
    """The full name of one of the platform's container labels (``node``, ``replica``...)."""
    return LABEL_PREFIX + key


def container_config(
    spec: ReplicaSpec,
    *,
    node: str,
    user: str,
    network_mode: str,
    pids_limit: int,
    data: DataFolders | None,
    cgroup_parent: str,
) -> dict[str, Any]:
    """What dockerd creates ``spec``'s container with, for ``node``'s Docker runtime."""
    env = {**spec.env, PLATFORM_MARKER: "1"}
    binds = []
    if spec.token_dir is not None:
        binds.append(f"{spec.token_dir}:{MOUNT_POINT}:ro")
        env[TOKEN_FILE_ENV] = f"{MOUNT_POINT}/token"
    if spec.status_dir is not None:
        binds.append(f"{spec.status_dir}:{STATUS_MOUNT}")
        env[STATUS_FILE_ENV] = f"{STATUS_MOUNT}/status"
    groups = []
    if data is not None:  # its namespace's folder alone, and the group to use it
        folder = data.folder(spec.namespace)
        binds.append(f"{folder.path}:{DOCKER_DATA}")
        env[DATA_ENV] = DOCKER_DATA
        groups.append(str(folder.gid))
    memory_bytes = spec.reservation.memory_mib * 2**20
    return {
        "Image": spec.image,
        "Cmd": list(spec.command) or None,
        "Env": [f"{key}={value}" for key, value in env.items()],
        "User": user,
        "Labels": {
            label("node"): node,
            label("namespace"): spec.namespace,
            label("app"): spec.app,
            label("replica"): spec.replica_id,
            label("cpu-millicores"): str(spec.reservation.cpu_millicores),
            label("memory-mib"): str(spec.reservation.memory_mib),
        },
        "HostConfig": {
            "CpuPeriod": CPU_PERIOD_US,
            "CpuQuota": max(1000, spec.reservation.cpu_millicores * CPU_PERIOD_US // 1000),
            "CpuShares": 2,
            "CgroupParent": cgroup_parent,
            "Memory": memory_bytes,
            "MemorySwap": memory_bytes,
            "OomScoreAdj": 1000,
            "PidsLimit": pids_limit,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "NetworkMode": network_mode,
            "Binds": binds,
            "GroupAdd": groups,
            "RestartPolicy": {"Name": "no"},
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}},
        },
    }
