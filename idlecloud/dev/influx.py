"""A local InfluxDB 1.x for development, tests, benchmarks and the demo.

Debian's ``influxdb`` (1.6.7) is installed if missing (as root) and started with a
configuration of ours: HTTP on 127.0.0.1:8086 only, its RPC port on loopback, and usage
reporting off (no traffic leaves the machine). :func:`scratch_database` lends a test a
database of its own, dropped afterwards.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bus.defaults import INFLUX_URL
from idlecloud.dev.services import DevServiceError, ensure_daemon

__all__ = [
    "INFLUX_URL",
    "ensure_influxdb",
    "influx_query",
    "influxdb_running",
    "scratch_database",
    "stop_influxdb",
]

_CONF_PATH = Path("/etc/idlecloud/influxdb.conf")
_LOG_PATH = Path("/var/log/idlecloud-influxdb.log")
_CONF_TEXT = """\
# Written by idlecloud's idlecloud.dev.influx: InfluxDB on loopback for development and tests.
reporting-disabled = true
bind-address = "127.0.0.1:8088"
[meta]
  dir = "/var/lib/influxdb/meta"
[data]
  dir = "/var/lib/influxdb/data"
  wal-dir = "/var/lib/influxdb/wal"
[http]
  enabled = true
  bind-address = "127.0.0.1:8086"
  log-enabled = false
"""


def influxdb_running() -> bool:
    """True if InfluxDB answers its ping on 127.0.0.1:8086."""
    try:
        with urllib.request.urlopen(f"{INFLUX_URL}/ping", timeout=2) as answer:
            return bool(answer.status == 204)
    except (urllib.error.URLError, OSError):
        return False


def ensure_influxdb(timeout_s: float = 60.0) -> None:
    """Install (as root) and start InfluxDB on loopback unless it already answers.

    Raises:
        DevServiceError: it could not be installed or did not start in ``timeout_s``.
    """
    _CONF_PATH.parent.mkdir(parents=True, exist_ok=True)
    _CONF_PATH.write_text(_CONF_TEXT)
    ensure_daemon(["influxd", "-config", str(_CONF_PATH)], package="influxdb",
                  log_path=_LOG_PATH, up=influxdb_running, what="InfluxDB",
                  timeout_s=timeout_s)  # fmt: skip


def stop_influxdb() -> None:
    """Stop the InfluxDB this module started (tests of an outage use it)."""
    subprocess.run(["pkill", "-f", f"influxd -config {_CONF_PATH}"], check=False)
    deadline = time.monotonic() + 30
    while influxdb_running() and time.monotonic() < deadline:
        time.sleep(0.1)


def influx_query(query: str, database: str = "") -> dict[str, object]:
    """Run InfluxQL through the v1 HTTP API and return its JSON answer.

    Raises:
        DevServiceError: InfluxDB refused the query.
    """
    from services.metrics.influx import query_v1  # the one InfluxQL client

    try:
        return query_v1(INFLUX_URL, database, query, change=True)
    except urllib.error.HTTPError as error:
        raise DevServiceError(f"InfluxDB refused {query!r}: {error.read()[:300]!r}") from None


@contextmanager
def scratch_database(prefix: str = "test") -> Iterator[str]:
    """Start InfluxDB if needed and lend a fresh database, dropped afterwards."""
    ensure_influxdb()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    influx_query(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        influx_query(f'DROP DATABASE "{name}"')
