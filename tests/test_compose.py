"""The control host's compose file and the lab PCs' agent files: Debian's docker-compose
accepts the compose file, and what they name is what the project has. (Nothing is
started: no image can be pulled here.)"""

from __future__ import annotations

import asyncio
import configparser
import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

import typer
import yaml

from idlecloud.cli import app as bus_app
from idlecloud.dev.services import apt_install
from nodeagent.runtime.hierarchy import ReplicaParent, replica_parent

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"
THIRD_PARTY = {"rabbitmq", "influxdb", "grafana"}


async def compose_config() -> dict[str, Any]:
    if shutil.which("docker-compose") is None:
        await asyncio.to_thread(apt_install, "docker-compose")
    env = {**os.environ, "IDLECLOUD_BROKER_PASSWORD": "secret", "IDLECLOUD_KID": "k1",
           "IDLECLOUD_ERLANG_COOKIE": "cookie",
           "GRAFANA_ADMIN_PASSWORD": "secret"}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        "docker-compose", "-f", str(COMPOSE / "docker-compose.yml"), "config", cwd=COMPOSE,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    config: dict[str, Any] = yaml.safe_load(out)
    return config


async def test_docker_compose_accepts_the_file_and_it_runs_every_service_the_project_has() -> None:
    services = (await compose_config())["services"]
    ours = {path.parent.name for path in (ROOT / "services").glob("*/__main__.py")}
    assert set(services) == ours | THIRD_PARTY
    for name in ours:
        assert services[name]["command"] == ["python", "-m", f"services.{name}"]
        assert services[name]["environment"]["IDLECLOUD_URL"].startswith("amqps://idlecloud:")
    assert services["placement"]["environment"]["IDLECLOUD_REPLICA_TOKENS"] == "1"
    assert (
        services["auth"]["environment"]["IDLECLOUD_AUTH_KEY_FILE"] == "/etc/idlecloud/keys/k1.pem"
    )
    cookies = {
        services[name]["environment"]["RABBITMQ_ERLANG_COOKIE"] for name in ("auth", "rabbitmq")
    }
    assert cookies == {"cookie"}  # the auth service's rabbitmqctl reaches the broker
    grafana = {volume.split(":")[0] for volume in services["grafana"]["volumes"]}
    assert grafana == {str(COMPOSE / "grafana/provisioning"), str(COMPOSE / "grafana/dashboards")}
    for path in grafana:
        assert await asyncio.to_thread(Path(path).is_dir), path


async def test_the_compose_file_refuses_to_run_without_its_secrets() -> None:
    if shutil.which("docker-compose") is None:
        await asyncio.to_thread(apt_install, "docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDLECLOUD_", "GRAFANA_"))}
    process = await asyncio.create_subprocess_exec(
        "docker-compose", "-f", str(COMPOSE / "docker-compose.yml"), "config", cwd="/",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await process.communicate()
    assert process.returncode != 0 and b"set it in compose/.env" in err


def test_the_agent_files_name_only_settings_bus_agent_run_has() -> None:
    command = typer.main.get_command(bus_app)
    agent_run = command.commands["agent"].commands["run"]  # type: ignore[attr-defined]
    known = {parameter.name for parameter in agent_run.params}
    settings = tomllib.loads((COMPOSE / "agent/agent.toml").read_text())
    assert set(settings) <= known, set(settings) - known
    unit = (COMPOSE / "agent/idlecloud-agent.service").read_text()
    assert (
        "ExecStart=/opt/idlecloud/venv/bin/bus agent run --config /etc/idlecloud/agent.toml" in unit
    )
    assert "KillMode=process" in unit  # replicas outlive an agent restart, to be adopted
    variables = dict(
        line.split("=", 1) for line in (COMPOSE / "agent/agent.env").read_text().splitlines()
        if line and not line.startswith("#")
    )  # fmt: skip
    envvars = {e for p in agent_run.params for e in ([p.envvar] if isinstance(p.envvar, str)
                                                     else p.envvar or [])}  # fmt: skip
    read_by_the_credentials = {"IDLECLOUD_API_KEY_FILE", "IDLECLOUD_CA_FILE"}
    assert set(variables) - read_by_the_credentials <= envvars, set(variables) - envvars


def test_the_agents_unit_delegates_its_cgroup_and_replicas_nest_inside_it() -> None:
    """Checked statically: no systemd runs as PID 1 here. The unit delegates its control
    group and keeps replicas across an agent restart; from the cgroup file an agent of
    that unit would read, replicas' groups go inside the unit's (on v2 after the agent
    moves into a leaf of its own), and outside systemd under idlecloud/<pc>."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "compose" / "agent" / "idlecloud-agent.service")
    service = unit["Service"]
    assert (service["Delegate"], service["KillMode"]) == ("yes", "process")
    unit_group = "system.slice/idlecloud-agent.service"
    v2 = f"0::/{unit_group}\n"
    assert replica_parent(v2, "edge", unified=True) == ReplicaParent(
        f"{unit_group}/replicas", f"{unit_group}/agent"
    )
    v1 = f"12:freezer:/\n4:cpu,cpuacct:/{unit_group}\n3:memory:/{unit_group}\n"
    assert replica_parent(v1, "edge", unified=False) == ReplicaParent(f"{unit_group}/replicas")
    shell = "4:cpu,cpuacct:/user.slice\n0::/user.slice/user-0.slice/session-1.scope\n"
    assert replica_parent(shell, "edge", unified=False) == ReplicaParent("idlecloud/edge")
    assert replica_parent("6:freezer:/\n", "edge", unified=False) == ReplicaParent("idlecloud/edge")
