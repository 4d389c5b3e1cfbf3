"""A RabbitMQ cluster of several nodes on this machine, for tests, benchmarks and the demo.

Each node is a plain ``rabbitmq-server`` process from Debian's package (its wrapper runs
it as the rabbitmq user) with its own node name (``idlecloud-N@localhost``), AMQP,
management and Erlang distribution ports, data and log folder, and configuration; all
share the rabbitmq user's Erlang cookie, which is what lets the nodes and ``rabbitmqctl``
talk. The first node forms the cluster; the others join it. Plain processes, not
testcontainers: no image can be pulled here, a locally built one would carry the same
package, and a test signals a process (SIGKILL, SIGSTOP) and starts it again directly.

The nodes are configured as a site's would be: ``cluster_partition_handling =
pause_minority`` (a node that finds itself cut off from most of the cluster stops
serving; the majority never restarts) and a much shorter ``net_ticktime`` than RabbitMQ's
60 s, 4 s, so that a hung node is noticed by its peers within 3 to 5 s (at 10 s, 7.5 to
12.5 s: a consumer of a queue the hung node led, and the journal's new writer, waited that
long). A node that hung (SIGSTOP, a suspended VM) and resumes is not caught by either
strategy in RabbitMQ 3.10.8 (seen here: under ``pause_minority`` it kept serving beside
the others, partitioned, and under ``autoheal`` the winner waited for it to stop for
minutes): :meth:`ClusterNode.restart` is what an admin, or a watchdog, does then.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idlecloud.dev.services import (
    BrokerInfo,
    DevServiceError,
    apt_install,
    broker_conf,
    broker_url,
    create_vhost,
    delete_vhost,
    ensure_dev_tls,
    management,
    port_open,
    run_command,
    spawn_daemon,
)

__all__ = [
    "CLUSTER_DIR",
    "NET_TICKTIME_S",
    "Cluster",
    "ClusterNode",
    "ensure_cluster",
    "scratch_cluster_vhost",
]

#: Where the nodes keep their configuration, data and logs.
CLUSTER_DIR = Path("/var/lib/idlecloud-dev/cluster")
#: How long a peer may stay silent before the others consider it down (Erlang's
#: ``net_ticktime``: noticed after 0.75 to 1.25 times it). Lower than a site across
#: buildings may want: a node that stalls longer (a VM migrated live) is taken for down.
NET_TICKTIME_S = 4
_PLUGINS = "[rabbitmq_management,rabbitmq_auth_backend_oauth2]."
_AMQP_BASE_PORT = 5680
_MANAGEMENT_BASE_PORT = 15680
_DIST_BASE_PORT = 25680


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node of the local cluster (``index`` from 1)."""

    index: int

    @property
    def name(self) -> str:
        """Its Erlang node name."""
        return f"idlecloud-{self.index}@localhost"

    @property
    def amqp_port(self) -> int:
        """Where it takes AMQP connections (on loopback)."""
        return _AMQP_BASE_PORT + self.index

    @property
    def management_port(self) -> int:
        """Where its management API listens (on loopback)."""
        return _MANAGEMENT_BASE_PORT + self.index

    @property
    def folder(self) -> Path:
        """Its configuration, data and logs."""
        return CLUSTER_DIR / f"node-{self.index}"

    def url(self, vhost: str = "/") -> str:
        """The AMQP URL of ``vhost`` on this node alone."""
        return broker_url(vhost, port=self.amqp_port)

    def ctl(self, *arguments: str, timeout_s: float = 60.0) -> str:
        """Run ``rabbitmqctl`` against this node; its output.

        Raises:
            DevServiceError: it failed (the node is down, say).
        """
        return run_command(["rabbitmqctl", "-n", self.name, *arguments], timeout_s)

    def pid(self) -> int | None:
        """Its Erlang VM's process id, or None when it does not run (found by the node name
        in the VM's environment, which can be read while it is stopped with SIGSTOP)."""
        wanted = f"RABBITMQ_NODENAME={self.name}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                program = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
                environment = (entry / "environ").read_bytes().split(b"\0")
            except OSError:  # gone meanwhile
                continue
            if program.endswith(b"beam.smp") and wanted in environment:
                return int(entry.name)
        return None

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to its VM (SIGKILL: it dies; SIGSTOP: it hangs; SIGCONT: it goes on).

        Raises:
            DevServiceError: it does not run.
        """
        pid = self.pid()
        if pid is None:
            raise DevServiceError(f"{self.name} does not run")
        os.kill(pid, sig)

    def restart(self, timeout_s: float = 120.0) -> None:
        """Stop and start its RabbitMQ application (its VM stays): what heals a node that
        resumed after hanging and stays partitioned from the others.

        Raises:
            DevServiceError: it did not come back within ``timeout_s``.
        """
        self.ctl("stop_app", timeout_s=timeout_s)
        self.ctl("start_app", timeout_s=timeout_s)

    def running(self) -> bool:
        """Whether it takes AMQP connections."""
        return port_open(self.amqp_port)

    def start(self) -> None:
        """Write its configuration and start it (in its own session: it outlives the
        caller, like a system service); returns at once: see :meth:`Cluster.wait`."""
        ensure_dev_tls()
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "conf.d"
        conf.mkdir(exist_ok=True)
        extra = "cluster_partition_handling = pause_minority\n"
        (conf / "10-idlecloud.conf").write_text(
            broker_conf(self.amqp_port, self.management_port, tls=False, extra=extra)
        )
        (self.folder / "enabled_plugins").write_text(_PLUGINS)
        run_command(["chown", "-R", "rabbitmq:rabbitmq", str(self.folder)])
        environment = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(_DIST_BASE_PORT + self.index),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "data"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq"),
            "RABBITMQ_CONFIG_FILES": str(conf),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"-kernel net_ticktime {NET_TICKTIME_S}",
        }
        spawn_daemon(["rabbitmq-server"], self.folder / "console.log", environment)


@dataclass(frozen=True, slots=True)
class Cluster:
    """The local cluster's nodes."""

    nodes: tuple[ClusterNode, ...]

    def url(self, vhost: str = "/") -> str:
        """The addresses of every node, as a client takes them (comma-separated)."""
        return ",".join(node.url(vhost) for node in self.nodes)

    def any_running(self) -> ClusterNode:
        """The first node that takes connections.

        Raises:
            DevServiceError: none does.
        """
        for node in self.nodes:
            if node.running():
                return node
        raise DevServiceError("no node of the local cluster runs: `bus dev up --cluster 3`")

    def members(self, via: ClusterNode | None = None) -> set[str]:
        """The running nodes, as ``via`` (else the first running node) sees them."""
        asked = via or self.any_running()
        status = json.loads(asked.ctl("cluster_status", "--formatter", "json"))
        return set(status.get("running_nodes", []))

    def wait(self, nodes: Sequence[ClusterNode] | None = None, timeout_s: float = 180.0) -> None:
        """Wait until ``nodes`` (else all) have booted and recovered their queues.

        Raises:
            DevServiceError: one did not within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        for node in nodes or self.nodes:
            while not node.running():
                if time.monotonic() > deadline:
                    raise DevServiceError(
                        f"{node.name} did not start in {timeout_s:g} s; see {node.folder}/log"
                    )
                time.sleep(0.2)
            left_s = max(1, int(deadline - time.monotonic()))
            node.ctl("await_startup", "--timeout", str(left_s), timeout_s=left_s + 30)

    def wait_whole(self, timeout_s: float = 180.0) -> None:
        """Wait until every node runs and sees every other (after a failure: a node killed
        and started again, or a partition being healed, which restarts nodes).

        Raises:
            DevServiceError: the cluster was not whole within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        wanted = {node.name for node in self.nodes}
        while True:
            try:
                self.wait(timeout_s=max(1.0, deadline - time.monotonic()))
                if all(self.members(via=node) == wanted for node in self.nodes):
                    return
            except DevServiceError:  # a node restarting as the partition heals
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise DevServiceError(f"the cluster was not whole in {timeout_s:g} s")
            time.sleep(1.0)

    def management(self, method: str, path: str, body: object | None = None) -> object:
        """Call the management API of the first running node.

        Raises:
            DevServiceError: the API answered with an error.
        """
        return management(method, path, body, port=self.any_running().management_port)

    def connections(self, vhost: str) -> list[tuple[str, str]]:
        """The node and client-given name of each connection to ``vhost`` now (by the port
        it reached; the management API lists a connection only seconds later).

        Raises:
            DevServiceError: rabbitmqctl failed.
        """
        listing = ("list_connections", "-p", vhost, "port", "client_properties",
                   "--formatter", "json")  # fmt: skip
        by_port = {node.amqp_port: node.name for node in self.nodes}
        return [(by_port.get(int(row["port"]), str(row["port"])),
                 next((str(value) for key, _type, value in row["client_properties"]
                       if key == "connection_name"), ""))
                for row in json.loads(self.any_running().ctl(*listing))]  # fmt: skip

    def queues(self, vhost: str, *columns: str) -> dict[str, dict[str, Any]]:
        """Each queue of ``vhost`` by name, with ``columns`` of ``rabbitmqctl list_queues``
        (``leader``, ``members``, ``type``...).

        Raises:
            DevServiceError: rabbitmqctl failed.
        """
        listing = ("list_queues", "-p", vhost, "name", *columns, "--formatter", "json")
        return {row["name"]: row for row in json.loads(self.any_running().ctl(*listing))}


def ensure_cluster(size: int = 3, timeout_s: float = 240.0) -> Cluster:
    """Start a cluster of ``size`` local nodes unless it runs: the nodes that do not run are
    started; those not in the first node's cluster join it.

    Raises:
        DevServiceError: RabbitMQ could not be installed, or a node did not start or join.
    """
    if size < 1:
        raise DevServiceError(f"a cluster has at least one node, not {size}")
    if not Path("/usr/sbin/rabbitmq-server").exists():
        apt_install("rabbitmq-server")
    cluster = Cluster(tuple(ClusterNode(index) for index in range(1, size + 1)))
    down = [node for node in cluster.nodes if not node.running()]
    for node in down:
        if node.pid() is None:
            node.start()
        else:  # its VM runs with the application stopped (a join that failed half way)
            node.ctl("start_app")
    cluster.wait(down, timeout_s)
    first = cluster.nodes[0]
    for node in cluster.nodes[1:]:
        if first.name in cluster.members(via=node):
            continue
        node.ctl("stop_app")
        node.ctl("reset")
        node.ctl("join_cluster", first.name)
        node.ctl("start_app")
        cluster.wait([node], timeout_s)
    missing = {node.name for node in cluster.nodes} - cluster.members()
    if missing:
        raise DevServiceError(f"{', '.join(sorted(missing))} did not join; see {CLUSTER_DIR}")
    return cluster


@contextmanager
def scratch_cluster_vhost(cluster: Cluster, prefix: str = "test") -> Iterator[BrokerInfo]:
    """Lend a fresh virtual host on the cluster (its URL lists every node), deleted after."""
    port = cluster.any_running().management_port
    vhost = create_vhost(f"{prefix}-{uuid.uuid4().hex[:10]}", port=port).vhost
    try:
        yield BrokerInfo(url=cluster.url(vhost), vhost=vhost)
    finally:
        delete_vhost(vhost, port=cluster.any_running().management_port)
