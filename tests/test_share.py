"""Coexist mode's pure parts: the shared allocatable, which replicas go, the fast signals'
parsers, and which control groups are the agent's own to weigh."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.pressure import busy_ticks, memory_available_mib
from nodeagent.runtime.hierarchy import own_groups
from nodeagent.runtime.spec import ReplicaInfo
from nodeagent.share import newest, over_share, shared_allocatable
from schemas import ZERO, Amount, ReplicaState


def replica(replica_id: str, cpu: int, state: ReplicaState = ReplicaState.RUNNING) -> ReplicaInfo:
    return ReplicaInfo(replica_id, "alice", "stereo", state, Amount(cpu, 128))


def test_the_shared_allocatable_is_a_fraction_of_capacity_within_the_allocatable() -> None:
    capacity, allocatable = Amount(4000, 8192), Amount(3000, 6144)
    assert shared_allocatable(capacity, allocatable, 0.5, 0.25) == Amount(2000, 2048)
    assert shared_allocatable(capacity, allocatable, 1.0, 1.0) == allocatable
    with pytest.raises(ValueError, match=r"cpu_fraction must be between 0 and 1, not 1\.5"):
        shared_allocatable(capacity, allocatable, 1.5, 0.25)


def test_the_oldest_replicas_are_kept_and_the_newest_that_do_not_fit_go() -> None:
    replicas = [replica("a", 500), replica("b", 800), replica("c", 300),
                replica("d", 500, ReplicaState.EXITED)]  # fmt: skip
    started_at = {"a": 3.0, "b": 1.0, "c": 2.0}  # b is the oldest, a the newest
    assert over_share(replicas, started_at, Amount(1300, 4096)) == ["a"]
    assert over_share(replicas, started_at, Amount(1000, 4096)) == ["c", "a"]
    assert over_share(replicas, started_at, Amount(700, 4096)) == ["b", "a"]
    assert newest(replicas, started_at) == "a"
    assert newest([replica("adopted", 100)], started_at) == "adopted"
    assert newest([], started_at) is None


@given(st.lists(st.integers(0, 2000), max_size=12), st.integers(0, 4000))
def test_what_is_kept_always_fits_the_share(cpus: list[int], share_cpu: int) -> None:
    replicas = [replica(f"r{index}", cpu) for index, cpu in enumerate(cpus)]
    started_at = {f"r{index}": float(index) for index in range(len(cpus))}
    share = Amount(share_cpu, 1 << 20)
    over = set(over_share(replicas, started_at, share))
    kept = sum((r.reservation for r in replicas if r.replica_id not in over), ZERO)
    assert kept.shortfall(share) is None
    for replica_id in over:  # each stopped one would not have fitted beside the kept
        reservation = next(r.reservation for r in replicas if r.replica_id == replica_id)
        assert (kept + reservation).shortfall(share) is not None


def test_busy_ticks_count_all_but_idle_and_iowait() -> None:
    stat = "cpu  100 5 50 1000 40 3 2 7 0 0\ncpu0 50 2 25 500 20 1 1 3 0 0\n"
    assert busy_ticks(stat) == 100 + 5 + 50 + 3 + 2 + 7


def test_memory_available_is_read_in_mib() -> None:
    assert memory_available_mib("MemTotal: 4096000 kB\nMemAvailable:    2048000 kB\n") == 2000
    assert memory_available_mib("MemTotal: 4096000 kB\n") is None


@pytest.mark.parametrize(
    ("parent", "owned"),
    [
        ("idlecloud/pc7", ["idlecloud/pc7", "idlecloud"]),
        ("system.slice/idlecloud-agent.service/replicas",
         ["system.slice/idlecloud-agent.service/replicas"]),
        ("user.slice/user-1000.slice/session-2.scope", []),
    ],
)  # fmt: skip
def test_the_agent_weighs_only_its_own_groups_not_systemds(parent: str, owned: list[str]) -> None:
    assert own_groups(parent) == owned
