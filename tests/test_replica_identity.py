"""Replicas of the process runtime run under identities of their own, never the agent's.

Real processes as root on this machine: each replica reports, from inside, its ids,
``NoNewPrivs``, capabilities, umask and folders, and what it gets when it reaches for the
PC's node key, another replica's token, another namespace's files, or tries to signal or
ptrace another namespace's replica on the same PC, or to write another replica's status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent.runtime.identity import Identities, UidRange, uid_block
from nodeagent.runtime.process import ProcessRuntime
from nodeagent.runtime.spec import ReplicaSpec, StartFailed
from nodeagent.status import StatusFolders
from nodeagent.tokens import TokenFiles
from schemas import ReplicaState

from .helpers import always, process_runtime, replica_dir, wait_until

ROOT = Path(__file__).resolve().parent.parent

#: Runs inside a replica: what it is, and what it gets when it reaches for what isn't its.
PROBE = r"""
import ctypes, errno, json, os, sys
def attempt(action):
    try:
        action()
        return "allowed"
    except OSError as error:
        return errno.errorcode[error.errno]
def ptrace(pid):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, pid, 0, 0) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines())
mask = os.umask(0); os.umask(mask)
env = os.environ
print(json.dumps({
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "no_new_privs": status["NoNewPrivs"].strip(), "cap_eff": status["CapEff"].strip(),
    "cap_prm": status["CapPrm"].strip(), "cap_bnd": status["CapBnd"].strip(),
    "umask": mask, "home": env["HOME"], "tmpdir": env["TMPDIR"], "cwd": os.getcwd(),
    "own_token": open(env["IDLECLOUD_TOKEN_FILE"]).read(),
    "node_key": attempt(lambda: open(env["NODE_KEY"]).read()),
    "other_token": attempt(lambda: open(env["OTHER_TOKEN"]).read()),
    "other_home": attempt(lambda: open(env["OTHER_FILE"]).read()),
    "own_status": attempt(lambda: open(env["IDLECLOUD_STATUS_FILE"], "w").write("{}")),
    "other_status": attempt(lambda: open(env["OTHER_STATUS"], "w").write("{}")),
    "signal": attempt(lambda: os.kill(int(env["OTHER_PID"]), 0)),
    "ptrace": attempt(lambda: ptrace(int(env["OTHER_PID"]))),
}), flush=True)
"""

#: Bob's replica: keeps a file in its home and waits.
KEEPER = (
    "import os, time; open(os.environ['HOME'] + '/results.csv', 'w').write('42'); time.sleep(60)"
)


def _spec(
    replica_id: str, namespace: str, script: str, tokens: TokenFiles, **env: str
) -> ReplicaSpec:
    token_dir = tokens.write(replica_id, f"token of {replica_id}")
    status_dir = StatusFolders(tokens.replica_dir).folder(replica_id)
    command = (sys.executable, "-c", script)
    return ReplicaSpec(replica_id, namespace, "app", "local", command, env, token_dir=token_dir,
                       status_dir=status_dir)  # fmt: skip


async def test_a_replica_runs_as_its_own_unprivileged_user_and_reaches_nothing_else(
    tmp_path: Path, unique: str
) -> None:
    node = f"id{unique}"
    node_key = tmp_path / "node.key"  # a PC's API key, as the agent keeps it
    node_key.write_text("pc key")
    node_key.chmod(0o600)
    runtime = process_runtime(tmp_path / "state", node)
    tokens = TokenFiles(replica_dir(node))
    keeper = _spec("bob-1", "bob", KEEPER, tokens)
    await runtime.start(keeper, may_run=always)
    try:
        bob_home = replica_dir(node) / "homes" / "bob-1"
        await wait_until(lambda: (bob_home / "results.csv").exists(), what="bob's file")
        probe = _spec(
            "alice-1", "alice", PROBE, tokens,
            NODE_KEY=str(node_key), OTHER_TOKEN=str(tokens.folder("bob-1") / "token"),
            OTHER_FILE=str(bob_home / "results.csv"), OTHER_PID=str(runtime._replicas["bob-1"].pid),
            OTHER_STATUS=str(replica_dir(node) / "status" / "bob-1" / "status"),
        )  # fmt: skip
        await runtime.start(probe, may_run=always)
        await wait_until(lambda: runtime._replicas["alice-1"].exit_code is not None, what="probe")
        info = next(r for r in await runtime.replicas() if r.replica_id == "alice-1")
        assert info.state is ReplicaState.EXITED, info.log_tail
        seen = json.loads(info.log_tail[-1])
        bob = runtime._replicas["bob-1"].identity
        alice = runtime._replicas["alice-1"].identity
        assert alice is not None and bob is not None
        assert alice.uid != bob.uid and alice.gid != bob.gid
        assert alice.uid in runtime._identities.ids  # type: ignore[union-attr]
        assert (seen["uid"], seen["euid"], seen["gid"]) == (alice.uid, alice.uid, alice.gid)
        assert seen["groups"] == []
        assert seen["no_new_privs"] == "1"
        assert int(seen["cap_eff"], 16) == int(seen["cap_prm"], 16) == int(seen["cap_bnd"], 16) == 0
        assert seen["umask"] == 0o077
        home = str(replica_dir(node) / "homes" / "alice-1")
        assert seen["home"] == seen["tmpdir"] == seen["cwd"] == home
        assert seen["own_token"] == "token of alice-1"  # its own token, and only it
        assert node_key.read_text() == "pc key"  # the key is there, and the agent reads it
        assert seen["node_key"] == "EACCES"  # not ENOENT: it exists, and is refused
        assert seen["other_token"] == "EACCES"
        assert seen["other_home"] == "EACCES"
        assert seen["signal"] == "EPERM"
        assert seen["ptrace"] == "EPERM"
        assert (seen["own_status"], seen["other_status"]) == ("allowed", "EACCES")
        token = tokens.folder("alice-1") / "token"
        assert (token.stat().st_uid, token.stat().st_mode & 0o777) == (alice.uid, 0o400)
        tokens.write("alice-1", "renewed")  # a renewal keeps it the replica's alone
        assert (token.stat().st_uid, token.stat().st_mode & 0o777) == (alice.uid, 0o400)
    finally:
        for replica_id in ("alice-1", "bob-1"):
            await runtime.stop(replica_id, grace_s=0)
    assert not bob_home.exists()  # its home went with it
    await runtime.close()


def test_a_uid_is_not_reused_while_a_process_of_its_previous_owner_remains(
    tmp_path: Path, unique: str
) -> None:
    block = uid_block(f"reuse/{unique}")
    pair = UidRange(block.first, block.first + 1)
    identities = Identities(replica_dir(f"reuse{unique}"), pair, scratch=(tmp_path,))
    first = identities.assign("a", "alice")
    identities.assign("b", "alice")
    left_behind = subprocess.Popen(
        ["sleep", "30"], user=first.uid, group=first.gid, extra_groups=[]
    )  # a daemon of a's that outlived it
    try:
        identities.release("a")
        with pytest.raises(LookupError, match="out of replica uids"):
            identities.assign("c", "alice")
    finally:
        left_behind.kill()
        left_behind.wait()
    (tmp_path / "stray").touch()
    os.chown(tmp_path / "stray", first.uid, first.gid)  # a file of a's in a scratch folder
    assert identities.assign("c", "alice").uid == first.uid  # swept, then reused
    assert not (tmp_path / "stray").exists()


def test_a_range_that_overlaps_an_account_or_that_replicas_cannot_reach_is_refused(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match=r"overlap accounts of this PC: user nobody \(65534\)"):
        Identities(replica_dir("clash"), UidRange(65530, 65540))
    private = tmp_path / "replicas"  # pytest's folders are root's alone
    with pytest.raises(ValueError, match="other users may not enter"):
        Identities(private, uid_block("private"))
    with pytest.raises(ValueError, match="FIRST-LAST"):
        UidRange.parse("lots")


async def test_without_identities_replicas_are_refused_unless_same_user_is_allowed(
    tmp_path: Path,
) -> None:
    runtime = ProcessRuntime(tmp_path / "state", identities=None, cgroup_parent=None)
    spec = ReplicaSpec("r", "alice", "app", "local", ("true",))
    with pytest.raises(StartFailed, match="pass --insecure-same-user"):
        await runtime.start(spec, may_run=always)
    assert await runtime.replicas() == []
    await runtime.close()


def test_the_agent_refuses_same_user_mode_as_root(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "idlecloud", "agent", "run", "--insecure-same-user",
         "--utmp", str(tmp_path / "utmp"), "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "as root every replica gets a uid of its own" in done.stderr
