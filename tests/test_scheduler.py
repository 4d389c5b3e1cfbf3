"""The scheduling core, pure: each filter and scorer alone, then the pipeline and fairness."""

from __future__ import annotations

from collections import Counter

from schemas import Amount
from services.placement.scheduler import (
    NodeSlot,
    Schedule,
    Snapshot,
    Want,
    fits,
    least_allocated,
    matches_selector,
    preemption,
    schedule,
    spread,
)

THESIS = (("edge", 8000), ("ninja", 4000), ("jonathan", 4000), ("penguin", 4000))


def slot(name: str, cpu: int, memory: int = 16_384, **labels: str) -> NodeSlot:
    return NodeSlot(name, Amount(cpu, memory), Amount(cpu, memory), labels)


def thesis_pcs() -> list[NodeSlot]:
    return [slot(name, cpu) for name, cpu in THESIS]


def want(
    ns: str, app: str, count: int, cpu: int = 1000, memory: int = 512, **selector: str
) -> Want:
    return Want((ns, app), count, Amount(cpu, memory), selector)


def test_each_filter_says_why_a_node_cannot_take_a_replica() -> None:
    small = slot("tiny", 500, 256, room="lab1")
    assert fits(small, want("a", "x", 1, memory=256)) == "not enough free CPU"
    assert fits(small, want("a", "x", 1, cpu=100)) == "not enough free memory"
    assert fits(small, want("a", "x", 1, memory=4096)) == "not enough free CPU and memory"
    assert matches_selector(small, want("a", "x", 1, room="lab2")) == "no PC labelled room=lab2"
    assert matches_selector(small, want("a", "x", 1, room="lab1")) is None
    assert fits(small, want("a", "x", 1, cpu=500, memory=256)) is None


def test_each_scorer_prefers_what_it_should() -> None:
    crowded, empty = slot("a", 4000), slot("b", 4000)
    crowded.apps[("ns", "x")] = 3
    assert spread(empty, want("ns", "x", 1)) > spread(crowded, want("ns", "x", 1))
    half = NodeSlot("h", Amount(2000, 8192), Amount(4000, 16_384))
    assert least_allocated(empty, want("ns", "x", 1)) > least_allocated(half, want("ns", "x", 1))


def test_fifteen_replicas_spread_over_the_thesis_pcs_by_free_capacity() -> None:
    plan = schedule(
        Snapshot(thesis_pcs(), [want("alice", "stereo", 15)], total=Amount(20_000, 65_536))
    )
    per_node = Counter(node for _, node in plan.placements)
    assert sum(per_node.values()) == 15 and not plan.unplaced
    assert per_node == {"edge": 6, "ninja": 3, "jonathan": 3, "penguin": 3}  # by size


def test_what_does_not_fit_is_reported_with_the_reasons() -> None:
    nodes = [slot("a", 1000, room="lab1"), slot("b", 3000, room="lab2")]
    plan = schedule(
        Snapshot(nodes, [want("alice", "big", 2, cpu=2000), want("bob", "x", 1, room="lab3")])
    )
    assert plan.placements == [(("alice", "big"), "b")]
    assert plan.unplaced[("alice", "big")] == ("no PC can take a replica (2 x not enough free CPU)")
    assert "no PC labelled room=lab3" in plan.unplaced[("bob", "x")]
    assert schedule(Snapshot([], [want("a", "x", 1)])).unplaced[("a", "x")] == (
        "no PC is free to take work"
    )


def test_scarce_capacity_is_shared_by_dominant_resource_fairness() -> None:
    nodes = [slot(f"pc{index}", 4000) for index in range(3)]  # 12 CPUs for 2 x 10 wanted
    snapshot = Snapshot(
        nodes, [want("alice", "a", 10), want("bob", "b", 10)], total=Amount(12_000, 3 * 16_384)
    )
    plan = schedule(snapshot)
    per_namespace = Counter(key[0] for key, _ in plan.placements)
    assert per_namespace == {"alice": 6, "bob": 6}
    assert Amount(6000, 3072).share_of(snapshot.total) == 0.5


def test_a_namespace_never_exceeds_its_quota_when_placed() -> None:
    plan = schedule(Snapshot(thesis_pcs(), [want("alice", "a", 10)],
                             usage={"alice": Amount(4000, 2048)},
                             quotas={"alice": Amount(6000, 65_536)},
                             total=Amount(20_000, 65_536)))  # fmt: skip
    assert len(plan.placements) == 2
    assert plan.unplaced[("alice", "a")] == "alice runs its whole quota already"


def test_preemption_stops_one_replica_of_the_namespace_above_its_fair_share() -> None:
    nodes = [slot("pc0", 4000), slot("pc1", 4000)]
    for node in nodes:
        node.free = Amount(0, 16_384)  # bob holds all 8 CPUs
    running = {("bob", "b"): [(f"b-{i}", f"pc{i % 2}") for i in range(8)]}
    sizes = {("bob", "b"): Amount(1000, 512)}
    snapshot = Snapshot(nodes, [want("alice", "a", 4)], usage={"bob": Amount(8000, 4096)},
                        total=Amount(8000, 32_768))  # fmt: skip
    plan = schedule(snapshot)
    assert plan.unplaced
    victim = preemption(snapshot, plan, running, sizes)
    assert victim == ("b-7", "pc1")  # the newest one
    halves = {"bob": Amount(4000, 2048), "alice": Amount(4000, 2048)}
    even = Snapshot(nodes, [want("alice", "a", 4)], usage=halves, total=Amount(8000, 32_768))
    assert preemption(even, schedule(even), running, sizes) is None
    assert preemption(snapshot, Schedule(), running, sizes) is None


def test_schedule_leaves_its_snapshot_as_it_was() -> None:
    """The core is sealed: the placements change the schedule's own nodes, not the input."""
    nodes = thesis_pcs()
    before = [(node.free, dict(node.apps)) for node in nodes]
    plan = schedule(Snapshot(nodes, [want("alice", "stereo", 15)], total=Amount(20_000, 65_536)))
    assert [(node.free, dict(node.apps)) for node in nodes] == before
    after = {node.name: node for node in plan.nodes}
    assert after["edge"].free == Amount(8000 - 6 * 1000, 16_384 - 6 * 512)
    assert after["edge"].apps == {("alice", "stereo"): 6}
    again = schedule(Snapshot(nodes, [want("alice", "stereo", 15)], total=Amount(20_000, 65_536)))
    assert again.placements == plan.placements
