"""A namespace's data folder: each replica gets its own namespace's, and no other's.

Asserted on the file system, with real replicas: the process runtime's (their own uids,
started by real agents of simulated PCs sharing one folder as the site's mount) and
Docker's (containers of the test image as 65534).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nodeagent.runtime.data import DATA_GIDS, DataFolders
from nodeagent.runtime.docker import DockerRuntime
from nodeagent.runtime.spec import ReplicaSpec, StartFailed
from nodeagent.sim import SimNode, remove_containers

from .control_plane import AGENT_ARGS, control_plane
from .helpers import always, wait_until
from .test_cli import bus_cli

#: What a replica does with its data folder: write its namespace there, then try the
#: other namespace's folder (argv[1]) every way, and write down what happened.
PROBE = """
import json, os, pathlib, sys, time
mine = pathlib.Path(os.environ["IDLECLOUD_DATA"])
(mine / "mine.txt").write_text(os.environ["IDLECLOUD_NAMESPACE"])
other = mine.parent / sys.argv[1]
tries = {"list the root": lambda: os.listdir(mine.parent),
         "list theirs": lambda: os.listdir(other),
         "read theirs": lambda: (other / "mine.txt").read_text(),
         "write theirs": lambda: (other / "intruder.txt").write_text("x")}
seen = {}
for what, act in tries.items():
    try:
        act()
        seen[what] = "allowed"
    except OSError as error:
        seen[what] = type(error).__name__
(mine / "probe.json").write_text(json.dumps(seen))
time.sleep(3600)
"""


@pytest.fixture
def data_root(unique: str) -> Iterator[Path]:
    """The site's shared folder (replicas, with uids of their own, cannot reach tmp_path)."""
    root = Path(tempfile.mkdtemp(prefix=f"data-{unique}-"))
    root.chmod(0o755)
    yield root / "site"
    shutil.rmtree(root)


def test_a_folder_is_made_once_with_a_group_of_its_own_and_a_system_group_is_refused(
    data_root: Path,
) -> None:
    folders = DataFolders(data_root)
    alice, bob = folders.folder("alice"), folders.folder("bob")
    assert alice == DataFolders(data_root).folder("alice")  # another agent finds the same
    assert alice.gid != bob.gid and alice.gid in DATA_GIDS and bob.gid in DATA_GIDS
    mode = alice.path.stat().st_mode
    assert stat.S_IMODE(mode) == 0o2770 and stat.S_IMODE(data_root.stat().st_mode) == 0o711
    assert {entry.name for entry in data_root.iterdir()} == {"alice", "bob"}  # none staged left
    (data_root / "root-owned").mkdir()  # an admin's mistake: a system group
    with pytest.raises(StartFailed, match="belongs to group 0, a system group"):
        folders.folder("root-owned")


async def test_process_replicas_use_their_namespaces_folder_and_cannot_touch_anothers(
    data_root: Path, unique: str, tmp_path: Path
) -> None:
    """Alice's replica writes to her folder; then Bob's, on another PC of the same site,
    tries hers: listing the root, listing, reading and writing her folder are all refused,
    and her folder holds only what she wrote. `bus data` and `bus apps` tell her where it
    is."""
    pcs = (SimNode(f"da{unique}", 2000, 4096), SimNode(f"db{unique}", 2000, 4096))
    args = (*AGENT_ARGS, "--data-root", str(data_root))
    async with control_plane(tmp_path, pcs, agent_args=args) as plane:
        for namespace, other in (("alice", "bob"), ("bob", "alice")):
            await plane.quota(namespace, 1000)
            probe = (sys.executable, "-c", PROBE, other)
            assert (await plane.deploy(namespace, "probe", 1, command=probe)).accepted
            written = data_root / namespace / "probe.json"
            await wait_until(written.exists, 60, f"{namespace}'s probe")
        told = await asyncio.to_thread(bus_cli, "data", "-n", "alice", "--json", url=plane.url)
        assert json.loads(told.stdout)["data_folders"] == [
            {"path": str(data_root / "alice"), "pcs": 2}
        ], told.stderr
        listed = await asyncio.to_thread(bus_cli, "apps", "-n", "alice", url=plane.url)
        assert f"data folder {data_root / 'alice'} (on 2 PCs;" in listed.stdout, listed.stdout
    alice, bob = data_root / "alice", data_root / "bob"
    assert (alice / "mine.txt").read_text() == "alice"
    assert sorted(entry.name for entry in alice.iterdir()) == ["mine.txt", "probe.json"]
    seen = json.loads((bob / "probe.json").read_text())
    assert seen == dict.fromkeys(
        ("list the root", "list theirs", "read theirs", "write theirs"), "PermissionError"
    ), seen
    made = (alice / "mine.txt").stat()
    assert made.st_gid == alice.stat().st_gid  # the folder's group, for her other replicas
    assert stat.S_IMODE(made.st_mode) & 0o060 == 0o060


@pytest.fixture
async def docker_runtime(
    docker_image: str, unique: str, data_root: Path
) -> AsyncIterator[DockerRuntime]:
    node = f"dd{unique}"
    runtime = DockerRuntime(node, usage_interval_s=0, data=DataFolders(data_root))
    yield runtime
    await runtime.close()
    await asyncio.sleep(0.1)  # its HTTP connection's transport closes on a later loop turn
    remove_containers(node)


async def test_a_container_sees_its_namespaces_folder_alone_at_data(
    docker_runtime: DockerRuntime, docker_image: str, data_root: Path
) -> None:
    """A container of Alice's and one of Bob's each write to /data as 65534 (the folder's
    group added): each write lands in its own namespace's folder, and nothing of the other
    namespace's is mounted."""
    script = ("echo $IDLECLOUD_NAMESPACE > $IDLECLOUD_DATA/mine.txt; "
              "ls -a / > $IDLECLOUD_DATA/root.txt; sleep 3600")  # fmt: skip
    for namespace in ("alice", "bob"):
        spec = ReplicaSpec(f"{namespace}-1", namespace, "probe", docker_image,
                           ("sh", "-c", script), {"IDLECLOUD_NAMESPACE": namespace})  # fmt: skip
        await docker_runtime.start(spec, may_run=always)
    for namespace in ("alice", "bob"):
        await wait_until((data_root / namespace / "mine.txt").exists, 30, f"{namespace}'s write")
        await asyncio.sleep(0.2)
        assert (data_root / namespace / "mine.txt").read_text().strip() == namespace
        assert sorted(entry.name for entry in (data_root / namespace).iterdir()) == [
            "mine.txt", "root.txt"]  # fmt: skip
        listed = (data_root / namespace).joinpath("root.txt").read_text().split()
        assert "data" in listed and "alice" not in listed and "bob" not in listed
        made = (data_root / namespace / "mine.txt").stat()
        assert (made.st_uid, made.st_gid) == (65534, (data_root / namespace).stat().st_gid)
