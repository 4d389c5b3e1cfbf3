"""Every `bus` command meets a bad name, a bad number, a missing file and an unreachable
broker with one sentence naming what was wrong, the documented exit code, and no
traceback (real `bus` processes; the broker address is one nothing listens on)."""

from __future__ import annotations

import pytest

from .test_cli import bus_cli

NOWHERE = "amqp://guest:guest@127.0.0.1:1/"
REFUSED, USAGE, UNREACHABLE = 1, 2, 3
CASES = [
    # a bad name: the field, the value and the rule
    (("apps", "-n", "Alice"), USAGE, "'--namespace' / '-n' (env var: 'IDLECLOUD_NAMESPACE'): "
     "'Alice': String should match pattern"),
    (("app", "Spin", "-n", "alice"), USAGE, "app = 'Spin'"),
    (("deploy", "Bad_Name", "-n", "alice", "--image", "x", "--command", "true"), USAGE,
     "app = 'Bad_Name'"),
    (("deploy", "x", "-n", "alice", "--image", "x", "--command", "true", "--env", "[/b]"),
     USAGE, "--env '[/b]' is not KEY=VALUE"),
    (("scale", "Spin", "3", "-n", "alice"), USAGE, "app = 'Spin'"),
    (("delete", "Spin", "-n", "alice"), USAGE, "app = 'Spin'"),
    (("cordon", "Edge"), USAGE, "node = 'Edge'"),
    (("uncordon", "Edge"), USAGE, "node = 'Edge'"),
    (("drain", "Edge"), USAGE, "node = 'Edge'"),
    (("quota", "set", "Alice", "--cpu-millicores", "1000", "--memory-mib", "1024"), USAGE,
     "namespace = 'Alice'"),
    (("quota", "show", "-n", "Alice"), USAGE, "'--namespace'"),
    (("events", "-n", "Alice"), USAGE, "'--namespace'"),
    (("token", "issue", "--role", "user", "--subject", "Alice"), USAGE, "subject = 'Alice'"),
    (("token", "issue", "--role", "wizard", "--subject", "alice"), USAGE, "unknown role"),
    (("token", "revoke", "not a key!"), USAGE, "key_id = 'not a key!'"),
    (("agent", "run", "--node", "Edge"), USAGE, "node name 'Edge'"),
    # a bad number: the option and the rule
    (("deploy", "x", "-n", "alice", "--image", "x", "--replicas", "-1"), USAGE, "--replicas"),
    (("deploy", "x", "-n", "alice", "--image", "x", "--cpu-millicores", "lots"), USAGE,
     "--cpu-millicores"),
    (("scale", "x", "many", "-n", "alice"), USAGE, "Invalid value for 'replicas'"),
    (("quota", "set", "alice", "--cpu-millicores", "-5"), USAGE, "--cpu-millicores"),
    (("quota", "set", "alice"), USAGE, "give --cpu-millicores, --memory-mib or both"),
    (("dead-letters", "--limit", "0"), USAGE, "--limit"),
    (("status", "--wait", "-1"), USAGE, "--wait"),
    (("sim", "up", "--pc", "edge:lots"), USAGE, "--pc 'edge:lots'"),
    # a missing file: which, and what to do
    (("deploy", "--file", "/nonexistent/app.toml", "-n", "alice"), USAGE,
     "cannot read /nonexistent/app.toml"),
    (("token", "issue", "--role", "admin", "--subject", "root", "--key-file",
      "/nonexistent/k.pem"), USAGE, "cannot read the signing key /nonexistent/k.pem"),
    (("broker", "config", "--tls-dir", "/nonexistent/tls"), USAGE,
     "no /nonexistent/tls/ca.pem; make the site's CA"),
    (("worker", "nonexistent_module:app"), USAGE, "cannot load 'nonexistent_module:app'"),
    (("up", "--auth-key-file", "/nonexistent/k.pem"), USAGE, "no signing key at /nonexistent"),
    (("report", "--since", "soon"), USAGE, "soon"),
    # an unreachable broker: where, and what to check
    (("status",), UNREACHABLE, "cannot reach the broker"),
    (("dead-letters",), UNREACHABLE, "cannot reach the broker"),
    (("apps", "-n", "alice"), UNREACHABLE, "cannot reach the broker"),
    (("app", "spin", "-n", "alice"), UNREACHABLE, "cannot reach the broker"),
    (("deploy", "x", "-n", "alice", "--image", "x", "--command", "true"), UNREACHABLE,
     "cannot reach the broker"),
    (("scale", "x", "2", "-n", "alice"), UNREACHABLE, "cannot reach the broker"),
    (("delete", "x", "-n", "alice"), UNREACHABLE, "cannot reach the broker"),
    (("nodes",), UNREACHABLE, "cannot reach the broker"),
    (("cordon", "edge"), UNREACHABLE, "cannot reach the broker"),
    (("quota", "set", "alice", "--cpu-millicores", "1000", "--memory-mib", "1024"),
     UNREACHABLE, "cannot reach the broker"),
    (("quota", "show", "-n", "alice"), UNREACHABLE, "cannot reach the broker"),
    (("events", "-n", "alice", "--seconds", "1"), UNREACHABLE, "cannot reach the broker"),
    (("token", "list"), UNREACHABLE, "cannot reach the broker"),
    (("token", "revoke", "0123456789abcdef"), UNREACHABLE, "cannot reach the broker"),
    (("whoami", "--auth-url", "http://127.0.0.1:1"), UNREACHABLE,
     "the auth service at http://127.0.0.1:1 cannot be reached"),
]  # fmt: skip


@pytest.mark.parametrize(("arguments", "code", "says"), CASES, ids=lambda c: str(c)[:60])
def test_a_mistake_is_one_sentence_with_its_exit_code(
    arguments: tuple[str, ...], code: int, says: str
) -> None:
    env = {"IDLECLOUD_API_KEY": "not-a-real-key"} if arguments[0] == "whoami" else None
    done = bus_cli(*arguments, url=NOWHERE, env=env)
    said = " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert done.returncode == code, (done.returncode, said)
    assert says in said, said
