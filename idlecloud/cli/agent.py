"""`bus agent run`: the agent of one lab PC."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated

import psutil
import typer

from bus import addresses
from bus.abc import Service
from bus.credentials import key_holder
from bus.defaults import AUTH_URL, BROKER_URL
from bus.service import run
from idlecloud.cli._common import UrlOption, fail, run_async
from nodeagent.agent import DESK_RESERVE, Agent, AgentSettings
from nodeagent.policy import PolicySettings
from nodeagent.runtime import DOCKER_NETWORK, DOCKER_USER, Runtime
from nodeagent.runtime.cgroup import Mounts
from nodeagent.runtime.data import DATA_GIDS, DataFolders
from nodeagent.runtime.hierarchy import replica_parent
from nodeagent.runtime.identity import Identities, UidRange
from nodeagent.runtime.process import ProcessRuntime
from nodeagent.share import shared_allocatable
from nodeagent.timetable import Timetable
from nodeagent.tokens import TokenFiles
from schemas import ZERO, Amount, PresenceMode
from schemas.base import DNS_LABEL_PATTERN

__all__ = ["agent_app"]

log = logging.getLogger(__name__)

#: The options' defaults are the policy's and the agent's own (AgentSettings' fields).
_POLICY = PolicySettings()

agent_app = typer.Typer(help="The agent that runs on every lab PC.", no_args_is_help=True)


def _load_config(context: typer.Context, path: Path | None) -> Path | None:
    """Read a TOML file of this command's settings into Click's defaults (flags and
    environment variables still win)."""
    if path is None:
        return None
    try:
        settings = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise typer.BadParameter(f"cannot read {path}: {error}") from None
    known = {parameter.name for parameter in context.command.params} - {"config"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise typer.BadParameter(
            f"{path}: unknown settings {unknown}; known: {sorted(k for k in known if k)}"
        )
    context.default_map = {**(context.default_map or {}), **settings}
    return path


def _default_node() -> str:
    return socket.gethostname().split(".")[0].lower()


def _option(help_text: str, env: str) -> typer.models.OptionInfo:
    option: typer.models.OptionInfo = typer.Option(help=help_text, envvar=f"IDLECLOUD_AGENT_{env}")
    return option


def _data_folders(root: Path | None, gids: str, replica_uids: str) -> DataFolders | None:
    """The namespaces' data folders under ``root``, if the site gives one.

    Raises:
        ValueError: the gids are malformed or overlap the replicas' ids, or ``root`` is
            not a folder.
    """
    if root is None:
        return None
    chosen, replicas = UidRange.parse(gids), UidRange.parse(replica_uids)
    if chosen.first <= replicas.last and replicas.first <= chosen.last:
        raise ValueError(f"--data-gids {chosen} overlaps --replica-uids {replicas}: a replica's "
                         "own group could then open another namespace's data folder")  # fmt: skip
    return DataFolders(root, chosen)


def _process_runtime(
    name: str,
    state_dir: Path,
    replica_dir: Path,
    uids: str,
    insecure_same_user: bool,
    usage_interval_s: float,
    data: DataFolders | None,
) -> ProcessRuntime:
    """The process runtime, with replicas' own identities where the agent is root.

    Raises:
        ValueError: the identities cannot be had as configured (the message says why).
    """
    identities = None
    if os.geteuid() == 0:
        if insecure_same_user:
            raise ValueError(
                "--insecure-same-user would run replicas as root; as root every replica "
                "gets a uid of its own, so leave it out"
            )
        identities = Identities(replica_dir, UidRange.parse(uids))
    elif insecure_same_user:
        log.warning("replicas run as this agent's own user (--insecure-same-user): "
                    "they can read its key and each other's tokens")  # fmt: skip
    mounts = Mounts.read()
    parent = replica_parent(Path("/proc/self/cgroup").read_text(), name, unified=mounts.unified)
    if parent.agent_leaf is not None and mounts.v2 is not None:  # a delegated v2 subtree
        with contextlib.suppress(OSError):  # not writable: the runtime uses no cgroups
            leaf = mounts.v2 / parent.agent_leaf
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(str(os.getpid()))
    runtime = ProcessRuntime(
        state_dir,
        identities=identities,
        insecure_same_user=insecure_same_user,
        cgroup_parent=parent.path,
        usage_interval_s=usage_interval_s,
        data=data,
    )
    runtime.adopt()
    return runtime


def _ahead_of_replicas() -> None:
    """As root, run the agent above normal CPU priority: its reaction to a person must
    never wait behind the replicas (they run at nice 19 and the lowest cgroup weight)."""
    if os.geteuid() == 0:
        os.setpriority(os.PRIO_PROCESS, 0, -5)


@agent_app.command("run")
def run_agent(
    config: Annotated[
        Path | None,
        typer.Option(
            help="A TOML file of these settings (e.g. cpu_millicores = 8000); flags and "
            "IDLECLOUD_AGENT_* variables override it.",
            envvar="IDLECLOUD_AGENT_CONFIG",
            is_eager=True,
            callback=_load_config,
        ),
    ] = None,
    url: UrlOption = BROKER_URL,
    node: Annotated[str | None, _option("This PC's name (default: the hostname).", "NODE")] = None,
    utmp: Annotated[Path, _option("The utmp file to watch for logins.", "UTMP")] = Path(
        "/var/run/utmp"
    ),
    input_dir: Annotated[
        Path, _option("Where keyboards and mice are (event* devices).", "INPUT_DIR")
    ] = Path("/dev/input"),
    state_dir: Annotated[Path, _option("Where the agent keeps its records.", "STATE_DIR")] = Path(
        "/var/lib/idlecloud/agent"
    ),
    replica_dir: Annotated[
        Path,
        _option(
            "Where replicas' homes and token files go (every user must be able to enter "
            "its parent folders).",
            "REPLICA_DIR",
        ),
    ] = Path("/var/lib/idlecloud/replicas"),
    replica_uids: Annotated[
        str,
        _option(
            "The uids (and namespaces' gids) process-runtime replicas run as, FIRST-LAST; "
            "no account of the PC may use them.",
            "REPLICA_UIDS",
        ),
    ] = "2000000000-2000099999",
    data_root: Annotated[
        Path | None,
        _option(
            "A folder every lab PC mounts alike (NFS, SMB): each replica gets its "
            "namespace's folder under it at $IDLECLOUD_DATA, and no other.",
            "DATA_ROOT",
        ),
    ] = None,
    data_gids: Annotated[
        str,
        _option(
            "The site-wide gids of namespaces' data folders, FIRST-LAST (apart from "
            "--replica-uids; the same on every PC).",
            "DATA_GIDS",
        ),
    ] = str(DATA_GIDS),
    insecure_same_user: Annotated[
        bool,
        _option(
            "Without root: run replicas as the agent's own user, where they can read its "
            "key and each other's tokens. For a demo on your own machine, never a lab PC.",
            "INSECURE_SAME_USER",
        ),
    ] = False,
    cpu_millicores: Annotated[
        int | None, _option("CPU this PC offers (default: all cores).", "CPU_MILLICORES")
    ] = None,
    memory_mib: Annotated[
        int | None, _option("Memory this PC offers (default: all of it).", "MEMORY_MIB")
    ] = None,
    reserve_cpu_millicores: Annotated[
        int, _option("CPU kept for the person at the desk.", "RESERVE_CPU_MILLICORES")
    ] = DESK_RESERVE.cpu_millicores,
    reserve_memory_mib: Annotated[
        int, _option("Memory kept for the person at the desk.", "RESERVE_MEMORY_MIB")
    ] = DESK_RESERVE.memory_mib,
    start_idle_s: Annotated[
        float, _option("Idle seconds before the PC takes work.", "START_IDLE_S")
    ] = _POLICY.start_idle_s,
    continue_idle_s: Annotated[
        float, _option("Idle seconds before paused replicas resume.", "CONTINUE_IDLE_S")
    ] = _POLICY.continue_idle_s,
    max_suspend_s: Annotated[
        float, _option("Seconds a replica may stay paused before eviction.", "MAX_SUSPEND_S")
    ] = _POLICY.max_suspend_s,
    input_active_s: Annotated[
        float, _option("Seconds a key press or mouse move counts as presence.", "INPUT_ACTIVE_S")
    ] = _POLICY.input_active_s,
    heartbeat_s: Annotated[
        float, _option("Seconds between heartbeats.", "HEARTBEAT_S")
    ] = AgentSettings.heartbeat_s,
    full_heartbeat_s: Annotated[
        float,
        _option(
            "Seconds between whole heartbeats while nothing changes (a few dozen bytes go "
            "in the beats between).",
            "FULL_HEARTBEAT_S",
        ),
    ] = AgentSettings.full_heartbeat_s,
    metrics_s: Annotated[
        float, _option("Seconds between metric samples.", "METRICS_S")
    ] = AgentSettings.metrics_s,
    busy_load: Annotated[
        float, _option("Cores of foreign CPU load that mean someone uses the PC.", "BUSY_LOAD")
    ] = _POLICY.busy_load,
    busy_load_for_s: Annotated[
        float, _option("Seconds that load must last to count.", "BUSY_LOAD_FOR_S")
    ] = _POLICY.busy_load_for_s,
    presence_mode: Annotated[
        PresenceMode,
        _option(
            "What replicas do while a person uses the PC: 'suspend' (freeze them all) or "
            "'coexist' (keep a share running at the lowest priority; class hours of "
            "--timetable still suspend).",
            "PRESENCE_MODE",
        ),
    ] = _POLICY.mode,
    coexist_cpu_fraction: Annotated[
        float,
        _option("coexist: the share of the PC's cores replicas keep.", "COEXIST_CPU_FRACTION"),
    ] = AgentSettings.coexist_cpu_fraction,
    coexist_memory_fraction: Annotated[
        float,
        _option("coexist: the share of the PC's memory replicas keep.", "COEXIST_MEMORY_FRACTION"),
    ] = AgentSettings.coexist_memory_fraction,
    coexist_min_idle_cores: Annotated[
        float,
        _option(
            "coexist: replicas freeze while the person's processes leave fewer cores idle.",
            "COEXIST_MIN_IDLE_CORES",
        ),
    ] = _POLICY.coexist_min_idle_cores,
    coexist_memory_floor_mib: Annotated[
        float,
        _option(
            "coexist: below this much available memory replicas freeze and the newest goes.",
            "COEXIST_MEMORY_FLOOR_MIB",
        ),
    ] = _POLICY.coexist_memory_floor_mib,
    coexist_input_burst_s: Annotated[
        float,
        _option(
            "coexist: replicas freeze while input comes this long with no quarter-second gap.",
            "COEXIST_INPUT_BURST_S",
        ),
    ] = _POLICY.coexist_input_burst_s,
    load_sample_s: Annotated[
        float, _option("Seconds between foreign-load samples.", "LOAD_SAMPLE_S")
    ] = AgentSettings.load_sample_s,
    foreign_load: Annotated[
        bool,
        _option(
            "Count CPU load of processes that are not the platform's as a person "
            "(--no-foreign-load: PCs simulated on a shared machine).",
            "FOREIGN_LOAD",
        ),
    ] = True,
    platform_user: Annotated[
        list[str] | None,
        typer.Option(help="A user whose processes are the platform's (e.g. rabbitmq)."),
    ] = None,
    timetable: Annotated[
        list[str] | None,
        typer.Option(help="Class hours to leave the PC alone, e.g. 'mon-fri 08:00-12:00'."),
    ] = None,
    runtime: Annotated[
        str, _option("How replicas run: 'process' or 'docker'.", "RUNTIME")
    ] = "process",
    docker_network: Annotated[
        str, _option("Docker network mode for replicas' containers.", "DOCKER_NETWORK")
    ] = DOCKER_NETWORK,
    docker_user: Annotated[
        str, _option("The unprivileged uid:gid replicas' containers run as.", "DOCKER_USER")
    ] = DOCKER_USER,
    auth_url: Annotated[
        str, typer.Option(envvar="IDLECLOUD_AUTH_URL", help="The auth service (with a PC key).")
    ] = AUTH_URL,
    replica_url: Annotated[
        str | None,
        _option(
            "Broker URL given to replicas (default: --url without credentials).", "REPLICA_URL"
        ),
    ] = None,
) -> None:
    """Run this PC's agent until SIGTERM (replicas keep running for the next agent to adopt).

    With a PC's API key (IDLECLOUD_API_KEY or IDLECLOUD_API_KEY_FILE) it connects with
    broker tokens from the auth service, limited to its own node.<name>.* names.
    """
    name = node or _default_node()
    if not re.match(DNS_LABEL_PATTERN, name):
        fail(f"node name {name!r} is not a DNS label; pass --node with lower-case letters")
    if not utmp.parent.is_dir():
        fail(f"cannot watch {utmp}: {utmp.parent} is not a directory (see --utmp)")
    try:
        policy = PolicySettings(
            start_idle_s=start_idle_s,
            continue_idle_s=continue_idle_s,
            max_suspend_s=max_suspend_s,
            input_active_s=input_active_s,
            busy_load=busy_load,
            busy_load_for_s=busy_load_for_s,
            mode=presence_mode,
            coexist_min_idle_cores=coexist_min_idle_cores,
            coexist_memory_floor_mib=coexist_memory_floor_mib,
            coexist_input_burst_s=coexist_input_burst_s,
        )
        hours = Timetable.parse(timetable or [])
        shared_allocatable(ZERO, ZERO, coexist_cpu_fraction, coexist_memory_fraction)
    except ValueError as error:
        fail(str(error))
    if runtime not in ("process", "docker"):
        fail(f"unknown runtime {runtime!r}; pass --runtime process or --runtime docker")
    settings = AgentSettings(
        node=name,
        capacity=Amount(
            cpu_millicores=cpu_millicores or (os.cpu_count() or 1) * 1000,
            memory_mib=memory_mib or psutil.virtual_memory().total // 2**20,
        ),
        desk_reserve=Amount(cpu_millicores=reserve_cpu_millicores, memory_mib=reserve_memory_mib),
        utmp_path=utmp,
        input_dir=input_dir,
        policy=policy,
        heartbeat_s=heartbeat_s,
        full_heartbeat_s=full_heartbeat_s,
        metrics_s=metrics_s,
        timetable=hours,
        load_sample_s=load_sample_s,
        foreign_load=foreign_load,
        platform_users=tuple(platform_user or ()),
        replica_url=replica_url or addresses.each(url, lambda node: node.with_user(None)),
        data_root=data_root,
        coexist_cpu_fraction=coexist_cpu_fraction,
        coexist_memory_fraction=coexist_memory_fraction,
    )
    replicas: Runtime
    usage_interval_s = metrics_s / 2  # each sample carries a fresh reading
    try:
        data = _data_folders(data_root, data_gids, replica_uids)
        if runtime == "docker":
            from nodeagent.runtime.docker import DockerRuntime  # aiohttp: only for Docker PCs

            replicas = DockerRuntime(name, network_mode=docker_network, user=docker_user,
                                     usage_interval_s=usage_interval_s, data=data)  # fmt: skip
        else:
            replicas = _process_runtime(name, state_dir, replica_dir, replica_uids,
                                        insecure_same_user, usage_interval_s, data)  # fmt: skip
    except (ValueError, OSError) as error:
        fail(str(error))
    _ahead_of_replicas()
    agent = Agent(settings, replicas, TokenFiles(replica_dir))
    services: list[Service] = [agent]
    url, connection, refresher = run_async(lambda: key_holder(url, f"agent {name}", auth_url))
    if refresher is not None:  # a PC's own key: connect with a broker token, kept fresh
        token = refresher.token
        if (token.role, token.subject) != ("node", name):
            fail(f"the API key is for {token.role} {token.subject}, not for PC {name}")
        services.append(refresher)
    run(url, services, name=connection, grace_s=5, declare=refresher is None)
