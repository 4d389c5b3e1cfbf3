"""Which copies `bus broker grow` adds (pure: :func:`idlecloud.cli.broker.grow_plan`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from idlecloud.cli.broker import Growth, Replicated, grow_plan

NODES = ("a@h", "b@h", "c@h")


def queue(name: str, *members: str, kind: str = "quorum") -> Replicated:
    return Replicated("/", name, kind, frozenset(members))


def test_a_queue_declared_while_a_node_was_down_gets_its_third_copy() -> None:
    plan = grow_plan([queue("tasks", "a@h", "b@h"), queue("journal", *NODES, kind="stream")],
                     NODES)  # fmt: skip
    assert plan == [Growth("/", "tasks", "quorum", "c@h")]


def test_a_single_node_needs_nothing_and_three_copies_is_enough() -> None:
    assert grow_plan([queue("tasks", "a@h")], ["a@h"]) == []
    five = [*NODES, "d@h", "e@h"]
    assert grow_plan([queue("tasks", *NODES)], five) == []


def test_new_copies_go_to_the_nodes_that_hold_fewest() -> None:
    """Queues made on one node before the others joined spread over the newcomers."""
    plan = grow_plan([queue(f"q{i}", "a@h") for i in range(4)], [*NODES, "d@h"])
    counts = {node: sum(g.node == node for g in plan) for node in ("b@h", "c@h", "d@h")}
    assert sum(counts.values()) == 8
    assert max(counts.values()) - min(counts.values()) <= 1


def test_a_member_on_a_node_that_left_does_not_count() -> None:
    plan = grow_plan([queue("tasks", "a@h", "gone@h")], NODES)
    assert {g.node for g in plan} == {"b@h", "c@h"}


@given(
    st.lists(st.sets(st.sampled_from([*NODES, "d@h", "e@h", "gone@h"]), min_size=1), max_size=8),
    st.integers(min_value=1, max_value=5),
)
def test_every_queue_ends_with_its_copies_each_on_a_new_running_node(
    memberships: list[set[str]], size: int
) -> None:
    nodes = [*NODES, "d@h", "e@h"][:size]
    queues = [queue(f"q{i}", *members) for i, members in enumerate(memberships)]
    plan = grow_plan(queues, nodes)
    for q in queues:
        added = [g.node for g in plan if g.name == q.name]
        assert len(added) == len(set(added))
        assert not set(added) & q.members
        assert set(added) <= set(nodes)
        held = (q.members & set(nodes)) | set(added)
        assert len(held) >= min(3, len(nodes))
        assert not added or len(held) == min(3, len(nodes))
