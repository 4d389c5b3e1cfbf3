"""The Kubernetes bridge's core, without I/O: intents, and the calls a pass makes."""

from __future__ import annotations

from services.kubebridge.plan import Intent, KubeNode, KubePod, intent, plan

LAB = frozenset({"lab"})
FREE = intent(False, None)
BUSY = intent(True, None, "session")


def node(name: str, *, pc: str | None = None, unschedulable: bool = False,
         ours: bool = False) -> KubeNode:  # fmt: skip
    return KubeNode(name, pc or name, unschedulable, ours)


def test_intents_put_a_person_and_a_drain_before_a_cordon() -> None:
    assert Intent(True, True, "a person is at the PC (session)") == BUSY
    assert intent(True, "cordon").empty  # a person empties the node whatever the admin said
    assert intent(False, "drain") == Intent(True, True, "an admin drained the PC")
    assert intent(False, "cordon") == Intent(True, False, "an admin cordoned the PC")
    assert Intent(False, False, "the PC is free") == FREE


def test_a_busy_pc_cordons_its_node_and_evicts_only_managed_running_pods() -> None:
    pods = {"edge": [
        KubePod("lab", "web-1", "edge"),
        KubePod("kube-system", "dns", "edge"),
        KubePod("lab", "logger", "edge", daemon_set=True),
        KubePod("lab", "going", "edge", terminating=True),
        KubePod("lab", "done", "edge", finished=True),
    ]}  # fmt: skip
    calls = plan({"edge": BUSY}, [node("edge")], pods, LAB)
    assert calls.cordon == [("edge", BUSY.why)]
    assert [pod.name for pod in calls.evict] == ["web-1"]
    assert not calls.uncordon


def test_a_cordoned_node_is_not_cordoned_again_but_its_pods_still_go() -> None:
    calls = plan({"edge": BUSY}, [node("edge", unschedulable=True, ours=True)],
                 {"edge": [KubePod("lab", "late", "edge")]}, LAB)  # fmt: skip
    assert not calls.cordon and [pod.name for pod in calls.evict] == ["late"]


def test_a_free_pc_uncordons_only_a_node_idlecloud_cordoned() -> None:
    ours, operators = node("edge", unschedulable=True, ours=True), node("ninja", unschedulable=True)
    calls = plan({"edge": FREE, "ninja": FREE}, [ours, operators], {}, LAB)
    assert calls.uncordon == ["edge"]
    assert not calls.cordon and not calls.evict


def test_an_admin_cordon_leaves_pods_where_they_are() -> None:
    calls = plan({"edge": intent(False, "cordon")}, [node("edge")],
                 {"edge": [KubePod("lab", "web-1", "edge")]}, LAB)  # fmt: skip
    assert calls.cordon and not calls.evict


def test_nodes_of_pcs_the_bus_never_described_are_left_alone() -> None:
    nodes = [node("gpu-1", unschedulable=True, ours=True), node("node-7.lab", pc="penguin")]
    calls = plan({"edge": BUSY}, nodes, {"node-7.lab": [KubePod("lab", "x", "node-7.lab")]}, LAB)
    assert not calls


def test_a_node_maps_to_its_pc_by_label() -> None:
    calls = plan({"penguin": BUSY}, [node("node-7.lab", pc="penguin")],
                 {"node-7.lab": [KubePod("lab", "x", "node-7.lab")]}, LAB)  # fmt: skip
    assert calls.cordon == [("node-7.lab", BUSY.why)] and len(calls.evict) == 1
