"""The `bus` command as a user runs it: a real process against the real broker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509

from bus import names
from bus.codec import Delivery, encode
from bus.connection import Bus
from bus.consumer import Consumer
from bus.topology import QueueSpec
from idlecloud.dev.services import (
    BrokerInfo,
    create_vhost,
    delete_stale_scratch_vhosts,
    delete_vhost,
    management,
)
from schemas import MESSAGES, DeployRequest

from .examples import deploy
from .helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent


def bus_cli(
    *arguments: str, url: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m idlecloud ARGUMENTS` (optionally with IDLECLOUD_URL and more variables) and
    capture its output."""
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", **(env or {})}
    if url is not None:
        env["IDLECLOUD_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "idlecloud", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )


@pytest.mark.parametrize(
    "command",
    [
        (),
        ("status",),
        ("dead-letters",),
        ("schemas", "export"),
        ("dev", "up"),
        ("worker",),
        ("agent", "run"),
        ("up",),
        ("deploy",),
        ("apps",),
        ("app",),
        ("scale",),
        ("delete",),
        ("events",),
        ("nodes",),
        ("cordon",),
        ("drain",),
        ("quota", "set"),
        ("quota", "show"),
    ],
)
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    done = bus_cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage: bus" in done.stdout


@pytest.mark.parametrize(
    "service", sorted(p.parent.name for p in ROOT.glob("services/*/__main__.py"))
)
def test_each_service_runs_alone_and_says_how(service: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"services.{service}", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
        cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"python -m services.{service}" in done.stdout and "--url" in done.stdout


def test_a_deployment_file_with_a_mistake_is_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app.toml"
    app.write_text('app = "stereo"\nimage = "local"\nreplicas = -2\ncpu_millicores = 500\n')
    done = bus_cli("deploy", "--file", str(app), "-n", "alice", url="amqp://nobody@127.0.0.1:1/")
    assert done.returncode == 2
    assert "invalid deployment: replicas = -2: Input should be greater than or equal to 0" in (
        " ".join(done.stderr.split())
    )
    app.write_text("app = [\n")
    broken = bus_cli("deploy", "--file", str(app), url="amqp://nobody@127.0.0.1:1/")
    assert broken.returncode == 2 and f"cannot read {app}" in " ".join(broken.stderr.split())


def test_schemas_export_writes_every_schema(tmp_path: Path) -> None:
    done = bus_cli("schemas", "export", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    written = {path.name for path in (tmp_path / "out").glob("*.v*.json")}
    assert written == {f"{m.schema_name}.v{m.schema_version}.json" for m in MESSAGES}
    assert "ReplicaStatus.v2.json" in written


def test_status_reports_the_topology(broker: BrokerInfo) -> None:
    done = bus_cli("status", "--json", url=broker.url)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["exchanges"] == {
        names.EVENTS_EXCHANGE: "present",
        names.COMMANDS_EXCHANGE: "present",
        names.REQUESTS_EXCHANGE: "present",
        names.ADMIN_DOOR: "present",
        names.DEAD_LETTER_EXCHANGE: "present",
    }
    assert set(report["queues"]) >= {names.DEAD_LETTER_QUEUE, names.JOURNAL_STREAM}
    assert report["services"]["quota"] == "not serving"  # no `bus up` on this vhost
    assert not report["ready"] and "the quota service" in report["missing"]


def test_an_unreachable_broker_is_a_one_line_error() -> None:
    done = bus_cli("status", "--url", "amqp://guest:guest@127.0.0.1:1/")
    assert done.returncode == 3
    assert "cannot reach the broker at amqp://***@127.0.0.1:1/" in done.stderr
    assert "Is RabbitMQ running?" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_credentials_are_named(broker: BrokerInfo) -> None:
    done = bus_cli("status", "--url", broker.url.replace("guest:guest", "guest:wrong"))
    assert done.returncode == 1
    assert "refused the credentials" in done.stderr


async def test_dead_letters_lists_reasons(broker: BrokerInfo, bus: Bus, unique: str) -> None:
    async def never(_message: DeployRequest, _delivery: Delivery) -> None:
        raise AssertionError("a mismatched body must not reach the handler")

    queue = names.service_queue(f"cli-{unique}", "requests")
    consumer = Consumer(
        QueueSpec.quorum(queue, (names.REQUESTS_EXCHANGE, f"ns.t{unique}.#")),
        [DeployRequest],
        never,
    )
    await consumer.start(bus)
    body, properties = encode(deploy("bob"))
    await bus.publish_raw(
        names.Route(names.REQUESTS_EXCHANGE, f"ns.t{unique}.deploy.x"), body, properties
    )
    await wait_until(lambda: consumer.dead_lettered == 1)
    await consumer.stop()
    done = bus_cli("dead-letters", "--json", "--limit", "10000", url=broker.url)
    assert done.returncode == 0, done.stderr
    mine = [item for item in json.loads(done.stdout) if item["queue"] == queue]
    assert len(mine) == 1
    assert "DeployRequest for ns.bob belongs on" in mine[0]["reason"]
    assert mine[0]["routing_key"] == f"ns.t{unique}.deploy.x"


def test_a_worker_target_that_is_not_an_app_is_named() -> None:
    done = bus_cli("worker", "examples.vector.tasks:add")
    assert done.returncode == 2
    assert "examples.vector.tasks:add is a Task, not an idlecloud App" in done.stderr
    done = bus_cli("worker", "no.such.module:app")
    assert done.returncode == 2
    assert "cannot load 'no.such.module:app'" in done.stderr


def test_a_bad_timetable_entry_is_named(tmp_path: Path) -> None:
    done = bus_cli("agent", "run", "--utmp", str(tmp_path / "utmp"), "--timetable", "weekdays 8-12")
    assert done.returncode == 2
    assert "'weekdays 8-12': expected DAYS HH:MM-HH:MM" in done.stderr


def test_scratch_vhosts_left_by_killed_runs_are_cleaned_up() -> None:
    old = create_vhost(f"test-stale-{uuid.uuid4().hex[:8]}")
    fresh = create_vhost(f"test-fresh-{uuid.uuid4().hex[:8]}")
    try:
        management(
            "PUT",
            f"vhosts/{old.vhost}",
            {"description": f"idlecloud scratch vhost, created at {time.time() - 7 * 3600:.0f}"},
        )
        removed = delete_stale_scratch_vhosts()
        assert old.vhost in removed and fresh.vhost not in removed
        names_left = {v["name"] for v in management("GET", "vhosts")}  # type: ignore[union-attr]
        assert old.vhost not in names_left and fresh.vhost in names_left
    finally:
        delete_vhost(fresh.vhost)


def test_tls_init_makes_a_ca_and_a_certificate_the_broker_config_names(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    done = bus_cli("tls", "init", str(folder), "--host", "control.lab.example", "--host",
                   "10.1.2.3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {p.name for p in folder.iterdir()} == {"ca.pem", "ca.key", "server.pem", "server.key"}
    assert (folder / "server.key").stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((folder / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["control.lab.example", "localhost"]
    again = bus_cli("tls", "init", str(folder), "--host", "other.lab.example")
    assert again.returncode == 0, again.stderr  # the same CA issues the new certificate
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    assert x509.load_pem_x509_certificate((folder / "server.pem").read_bytes()).issuer == ca.subject
    done = bus_cli("broker", "config", "--tls-dir", str(folder), "--out", str(tmp_path / "rmq"))
    assert done.returncode == 0, done.stderr
    conf = (tmp_path / "rmq" / "conf.d" / "20-idlecloud-auth.conf").read_text()
    assert "listeners.tcp.1 = 127.0.0.1:5672\n" in conf  # plain AMQP on loopback only
    assert f"ssl_options.certfile = {folder / 'server.pem'}\n" in conf
    assert "signing_keys" not in conf  # the auth service tells the running broker
