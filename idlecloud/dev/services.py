"""Local services for development, tests, benchmarks and the demo.

One helper brings up what the platform needs on this machine, so `make test`, every
benchmark (`python bench/X.py`) and `make demo` start services the same way: RabbitMQ,
installed from Debian's packages if missing (as root), configured to listen on 127.0.0.1
only with the internal auth backend first (later backends never lock the platform's own
users out), the management plugin enabled, and started if it is not running.

:func:`scratch_vhost` gives a test session or a benchmark a fresh virtual host that it
deletes afterwards, so runs never see each other's leftovers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from bus.defaults import AMQP_PORT, AMQPS_PORT, HOST, RESOURCE_SERVER_ID
from bus.tls import SiteCA, TlsFiles

__all__ = [
    "AMQPS_PORT",
    "AMQP_PORT",
    "CHROMIUM",
    "DEV_TLS",
    "HOST",
    "MANAGEMENT_PORT",
    "RESOURCE_SERVER_ID",
    "BrokerInfo",
    "DevServiceError",
    "apt_install",
    "broker_conf",
    "broker_tls_url",
    "broker_url",
    "create_vhost",
    "delete_stale_scratch_vhosts",
    "delete_vhost",
    "ensure_chromium",
    "ensure_daemon",
    "ensure_dev_tls",
    "ensure_rabbitmq",
    "free_port",
    "management",
    "port_open",
    "rabbitmqctl",
    "restart_broker",
    "run_command",
    "scratch_vhost",
    "spawn_daemon",
]

MANAGEMENT_PORT = 15672
_DEV_USER = "guest"
_DEV_PASSWORD = "guest"
_CONF_PATH = Path("/etc/rabbitmq/conf.d/10-idlecloud.conf")
#: The development CA (made on this machine, for its services alone) and the broker's
#: certificate from it.
DEV_CA_DIR = Path("/etc/idlecloud-dev/ca")
DEV_TLS_DIR = Path("/etc/rabbitmq/idlecloud-tls")
DEV_TLS = TlsFiles(DEV_TLS_DIR / "ca.pem", DEV_TLS_DIR / "broker.pem", DEV_TLS_DIR / "broker.key")
_PLUGINS = ("rabbitmq_management", "rabbitmq_auth_backend_oauth2")


def broker_conf(amqp_port: int, management_port: int, *, tls: bool, extra: str = "") -> str:
    """A development broker's configuration: listeners on loopback (plain, and over TLS with
    a certificate of the development CA when ``tls``), the internal auth backend first (so
    the platform's own users keep working), then the broker tokens of users, PCs and
    replicas (JWTs signed by the auth service); ``extra`` lines last."""
    secure = (
        f"listeners.ssl.1 = {HOST}:{AMQPS_PORT}\n"
        f"ssl_options.cacertfile = {DEV_TLS.ca_file}\n"
        f"ssl_options.certfile = {DEV_TLS.cert_file}\n"
        f"ssl_options.keyfile = {DEV_TLS.key_file}\n"
        "ssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n"
    ) if tls else ""  # fmt: skip
    return (
        "# Written by idlecloud's idlecloud.dev: a broker on loopback for development and tests.\n"
        f"listeners.tcp.1 = {HOST}:{amqp_port}\n"
        f"{secure}"
        "auth_backends.1 = internal\n"
        "auth_backends.2 = rabbit_auth_backend_oauth2\n"
        f"auth_oauth2.resource_server_id = {RESOURCE_SERVER_ID}\n"
        f"management.tcp.ip = {HOST}\n"
        f"management.tcp.port = {management_port}\n"
        f"{extra}"
    )


_CONF_TEXT = broker_conf(AMQP_PORT, MANAGEMENT_PORT, tls=True)


class _Daemon(subprocess.Popen[bytes]):
    """A service daemon started for development: it outlives this process on purpose, so
    it is not waited for and its object goes without a warning."""

    def __del__(self) -> None:
        pass


class DevServiceError(RuntimeError):
    """A local service could not be installed or started; the message says what to do."""


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """A broker virtual host ready for use."""

    url: str
    vhost: str


def broker_url(
    vhost: str = "/",
    user: str = _DEV_USER,
    password: str = _DEV_PASSWORD,
    *,
    port: int = AMQP_PORT,
) -> str:
    """The AMQP URL of the local broker's ``vhost`` (on ``port``: a cluster node's)."""
    return f"amqp://{user}:{password}@{HOST}:{port}/{quote(vhost, safe='')}"


def broker_tls_url(vhost: str = "/", user: str = _DEV_USER, password: str = _DEV_PASSWORD) -> str:
    """The ``amqps://`` URL of the local broker's ``vhost``, trusting only the development
    CA (aio-pika reads ``cafile`` from the URL)."""
    path = quote(vhost, safe="")
    return f"amqps://{user}:{password}@{HOST}:{AMQPS_PORT}/{path}?cafile={DEV_TLS.ca_file}"


def ensure_dev_tls() -> TlsFiles:
    """The development CA and the broker's certificate from it (for ``127.0.0.1`` and
    ``localhost``), made once; the key is the rabbitmq user's alone."""
    if all(path.exists() for path in (DEV_TLS.ca_file, DEV_TLS.cert_file, DEV_TLS.key_file)):
        return DEV_TLS
    ca = SiteCA.kept_in(DEV_CA_DIR, "idlecloud development CA")
    files = ca.issue_files(DEV_TLS_DIR, "broker", [HOST, "localhost"])
    with contextlib.suppress(LookupError, PermissionError):
        shutil.chown(files.key_file, "rabbitmq", "rabbitmq")
    return files


def free_port() -> int:
    """A TCP port on loopback nobody listens on (for a service of a test or the demo)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something listens on ``port`` on loopback."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def run_command(command: list[str], timeout_s: float = 300.0, stdin: bytes | None = None) -> str:
    """Run ``command`` and return what it printed.

    Raises:
        DevServiceError: it could not run or exited with an error (its output's tail).
    """
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            input=stdin,
            timeout=timeout_s,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DevServiceError(f"`{' '.join(command)}` failed: {error}") from None
    stdout = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        tail = (done.stderr.decode(errors="replace") or stdout).strip()[-2000:]
        raise DevServiceError(f"`{' '.join(command)}` exited with {done.returncode}:\n{tail}")
    return stdout


#: Daemons started here: kept referenced, as they outlive any one caller.
_DAEMONS: list[subprocess.Popen[bytes]] = []


def spawn_daemon(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
    """Start a server in its own session (it outlives this process, like a system
    service), its output appended to ``log_path``; returns at once."""
    with log_path.open("ab") as log:
        _DAEMONS.append(
            _Daemon(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        )


def ensure_daemon(
    command: list[str],
    *,
    package: str,
    log_path: Path,
    up: Callable[[], bool],
    what: str,
    timeout_s: float,
) -> None:
    """Unless ``up()`` says it answers already: install ``package`` if the program is
    missing (as root), start the server in its own session (it outlives this process,
    like a system service) logging to ``log_path``, and wait until it answers.

    Raises:
        DevServiceError: it could not be installed or did not answer within ``timeout_s``.
    """
    if up():
        return
    if shutil.which(command[0]) is None:
        apt_install(package)
    spawn_daemon(command, log_path)
    deadline = time.monotonic() + timeout_s
    while not up():
        if time.monotonic() > deadline:
            raise DevServiceError(f"{what} did not start in {timeout_s:g} s; see {log_path}")
        time.sleep(0.2)


#: Where Debian puts Chromium.
CHROMIUM = Path("/usr/bin/chromium")


def apt_install(*packages: str) -> None:
    """Install Debian packages (as root).

    Raises:
        DevServiceError: not root, or apt failed.
    """
    if os.geteuid() != 0:
        raise DevServiceError(
            f"{', '.join(packages)} not installed; install as root: "
            f"apt-get install -y {' '.join(packages)}"
        )
    run_command(["apt-get", "update", "-q"])
    run_command(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages])


def ensure_chromium() -> str:
    """Debian's Chromium (installed as root if missing), for the page's browser tests;
    its path.

    Raises:
        DevServiceError: it could not be installed.
    """
    if not CHROMIUM.exists():
        apt_install("chromium")
    return str(CHROMIUM)


def _wait_for(port: int, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not port_open(port):
        if time.monotonic() > deadline:
            raise DevServiceError(
                f"{what} did not open {HOST}:{port} within {timeout_s:g} s; "
                "see /var/log/rabbitmq/ for the broker's log"
            )
        time.sleep(0.2)


def ensure_rabbitmq(timeout_s: float = 180.0) -> None:
    """Install, configure and start RabbitMQ on loopback unless it already runs so.

    A broker running with an older configuration is restarted (it reads it at boot).

    Raises:
        DevServiceError: it could not be installed or started (the message says why).
    """
    configured = _CONF_PATH.exists() and _CONF_PATH.read_text() == _CONF_TEXT
    running = port_open(AMQP_PORT)
    if running and configured and port_open(MANAGEMENT_PORT) and port_open(AMQPS_PORT):
        return
    if shutil.which("rabbitmq-server") is None and not Path("/usr/sbin/rabbitmq-server").exists():
        apt_install("rabbitmq-server")
    ensure_dev_tls()
    if not configured:
        _CONF_PATH.parent.mkdir(parents=True, exist_ok=True)
        _CONF_PATH.write_text(_CONF_TEXT)
    run_command(["rabbitmq-plugins", "enable", "--offline", *_PLUGINS])
    action = "restart" if running else "start"
    init_script = Path("/etc/init.d/rabbitmq-server")
    if init_script.exists():
        run_command([str(init_script), action], timeout_s)
    elif running:
        run_command(["rabbitmqctl", "stop_app"], timeout_s)
        run_command(["rabbitmqctl", "start_app"], timeout_s)
    else:
        run_command(["rabbitmq-server", "-detached"], timeout_s)
    _wait_for(AMQP_PORT, timeout_s, "RabbitMQ")
    _wait_for(AMQPS_PORT, timeout_s, "RabbitMQ's TLS listener")
    _wait_for(MANAGEMENT_PORT, timeout_s, "the RabbitMQ management plugin")
    # The port opens before the node has finished booting (and recovering its queues).
    run_command(["rabbitmqctl", "await_startup", "--timeout", str(int(timeout_s))], timeout_s + 30)


def management(
    method: str, path: str, body: object | None = None, *, port: int = MANAGEMENT_PORT
) -> object:
    """Call the local broker's management HTTP API (on ``port``: a cluster node's) as the
    development user.

    Raises:
        DevServiceError: the API answered with an error.
    """
    credentials = base64.b64encode(f"{_DEV_USER}:{_DEV_PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"http://{HOST}:{port}/api/{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Basic {credentials}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:500]
        raise DevServiceError(
            f"management API {method} /api/{path}: {error.code} {detail}"
        ) from None
    return json.loads(text) if text else None


_SCRATCH = "idlecloud scratch vhost, created at "
#: Scratch vhosts older than this were left by a run that was killed: they are deleted.
SCRATCH_MAX_AGE_S = 6 * 3600


def create_vhost(vhost: str, *, port: int = MANAGEMENT_PORT) -> BrokerInfo:
    """Create a virtual host and give the development user every permission on it (through
    the management API on ``port``)."""
    name = quote(vhost, safe="")
    description = {"description": f"{_SCRATCH}{time.time():.0f}"}
    management("PUT", f"vhosts/{name}", description, port=port)
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    management("PUT", f"permissions/{name}/{_DEV_USER}", everything, port=port)
    return BrokerInfo(url=broker_url(vhost), vhost=vhost)


def delete_vhost(vhost: str, *, port: int = MANAGEMENT_PORT) -> None:
    """Delete a virtual host and everything in it."""
    management("DELETE", f"vhosts/{quote(vhost, safe='')}", port=port)


def delete_stale_scratch_vhosts(max_age_s: float = SCRATCH_MAX_AGE_S) -> list[str]:
    """Delete scratch vhosts left behind by killed runs; return their names."""
    stale = []
    listed = management("GET", "vhosts?columns=name,description")
    for vhost in listed if isinstance(listed, list) else []:
        description = str(vhost.get("description") or "")
        if description.startswith(_SCRATCH):
            created_at = float(description.removeprefix(_SCRATCH) or 0)
            if time.time() - created_at > max_age_s:
                delete_vhost(vhost["name"])
                stale.append(vhost["name"])
    return stale


@contextmanager
def scratch_vhost(prefix: str = "test") -> Iterator[BrokerInfo]:
    """Start the broker if needed and lend a fresh virtual host, deleted afterwards.

    Scratch vhosts older than :data:`SCRATCH_MAX_AGE_S` (left by killed runs) go first.
    """
    ensure_rabbitmq()
    delete_stale_scratch_vhosts()
    broker = create_vhost(f"{prefix}-{uuid.uuid4().hex[:10]}")
    try:
        yield broker
    finally:
        delete_vhost(broker.vhost)


def rabbitmqctl(*arguments: str, timeout_s: float = 60.0) -> str:
    """Run ``rabbitmqctl`` and return its output.

    Raises:
        DevServiceError: it failed.
    """
    return run_command(["rabbitmqctl", *arguments], timeout_s)


def restart_broker(timeout_s: float = 120.0) -> None:
    """Stop and start the broker's RabbitMQ application (every connection drops; durable
    queues and streams come back from disk) and wait until it has booted.

    Raises:
        DevServiceError: it did not come back within ``timeout_s``.
    """
    rabbitmqctl("stop_app", timeout_s=timeout_s)
    rabbitmqctl("start_app", timeout_s=timeout_s)
    rabbitmqctl("await_startup", "--timeout", str(int(timeout_s)), timeout_s=timeout_s + 30)
