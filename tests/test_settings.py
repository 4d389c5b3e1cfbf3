"""The services' settings from the environment: typed, checked, and refused by name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.settings import ServiceEnv

ROOT = Path(__file__).resolve().parent.parent


def test_the_defaults_and_a_full_environment_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("IDLECLOUD_"):
            monkeypatch.delenv(name)
    defaults = ServiceEnv()
    assert (defaults.auth_port, defaults.gateway_port, defaults.influx_db) == (
        8470, 8480, "idlecloud"
    )  # fmt: skip
    monkeypatch.setenv("IDLECLOUD_GATEWAY_PORT", "9480")
    monkeypatch.setenv("IDLECLOUD_REPLICA_TOKENS", "yes")
    monkeypatch.setenv("IDLECLOUD_KUBE_NAMESPACES", "research,batch")
    set_ = ServiceEnv()
    assert (set_.gateway_port, set_.replica_tokens, set_.kube_namespaces) == (
        9480, True, "research,batch"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("service", "variable", "value", "says"),
    [
        ("gateway", "IDLECLOUD_GATEWAY_PORT", "80a", "unable to parse string as an integer"),
        ("gateway", "IDLECLOUD_GATEWAY_PORT", "99999", "less than or equal to 65535"),
        ("auth", "IDLECLOUD_AUTH_PORT", "-1", "greater than or equal to 1"),
        ("placement", "IDLECLOUD_REPLICA_TOKENS", "maybe", "valid boolean"),
        ("metrics", "IDLECLOUD_INFLUX_DB", "no spaces", "should match pattern"),
        ("auth", "IDLECLOUD_AUTH_KEY_FILE", "", "set IDLECLOUD_AUTH_KEY_FILE"),
        ("kubebridge", "IDLECLOUD_KUBE_NAMESPACES", " , ", "set IDLECLOUD_KUBE_NAMESPACES"),
        ("jobs", "IDLECLOUD_JOB_RETENTION_S", "5", "greater than or equal to 60"),
    ],
)
def test_a_service_refuses_a_bad_setting_by_its_variables_name(
    service: str, variable: str, value: str, says: str
) -> None:
    env = {"PATH": "/usr/bin:/bin", variable: value}
    done = subprocess.run(
        [sys.executable, "-m", f"services.{service}", "--url", "amqp://nobody@127.0.0.1:1/"],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"python -m services.{service}: ")
    assert variable in done.stderr and says in done.stderr, done.stderr
