"""The reconciler and the registry, pure: desired and actual state in, commands out."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

from bench.reconcile_tick import world
from schemas import (
    CordonRequest,
    DeploymentState,
    Message,
    NodeAlive,
    NodeHeartbeat,
    NodePresence,
    Presence,
    PresenceCause,
    PresenceState,
    QuotaSet,
    Refusal,
    ReplicaReport,
    ReplicaState,
    ReplicaStatus,
    Resources,
    ScaleRequest,
)
from schemas.journal import Entry
from services.placement.reconciler import (
    Plan,
    Reconciler,
    ReconcilerSettings,
    Stop,
    generation_of,
)
from services.placement.registry import Registry
from services.placement.scheduler import finish
from services.state import DesiredState

from .examples import deploy

AT = datetime(2026, 11, 26, tzinfo=UTC)
IDLE = Presence(state=PresenceState.IDLE, cause=PresenceCause.NONE, since=AT)
BUSY = Presence(state=PresenceState.BUSY, cause=PresenceCause.SESSION, since=AT)
THESIS = {"edge": 8000, "ninja": 4000, "jonathan": 4000, "penguin": 4000}


class World:
    """Desired state, a registry, and PCs that do exactly what they are told."""

    def __init__(self, **settings: float) -> None:
        self.desired = DesiredState()
        self.registry = Registry(node_timeout_s=3.0)
        ids = itertools.count()
        self.reconciler = Reconciler(
            ReconcilerSettings(**settings), suffixes=lambda: f"{next(ids):08x}"
        )
        self.running: dict[str, dict[str, ReplicaReport]] = {name: {} for name in THESIS}
        self.presence = dict.fromkeys(THESIS, IDLE)
        self.seq = 0
        self.offset = 0
        self.now = 0.0
        self.dead: set[str] = set()

    def journal(self, message: Message) -> None:
        self.offset += 1
        self.desired.apply(Entry(self.offset, message))

    def beat(self, *nodes: str) -> None:
        self.seq += 1
        for node in nodes or tuple(self.running):
            self.registry.heartbeat(NodeHeartbeat(
                node=node, seq=self.seq, sent_at=AT,
                capacity=Resources(cpu_millicores=THESIS[node], memory_mib=16_384),
                allocatable=Resources(cpu_millicores=THESIS[node], memory_mib=16_384),
                usage=Resources(), presence=self.presence[node],
                replicas=tuple(self.running[node].values()),
            ), self.now)  # fmt: skip

    def tick(self, seconds: float = 1.0) -> Plan:
        """Time passes, every PC heartbeats, the reconciler runs and the PCs obey."""
        self.now += seconds
        self.beat(*(n for n in self.running if n not in self.dead))
        plan = self.reconciler.reconcile(self.desired, self.registry, self.now)
        for start in plan.starts:
            request = start.spec.request
            self.running[start.node][start.replica_id] = ReplicaReport(
                replica_id=start.replica_id, namespace=request.namespace, app=request.app,
                state=ReplicaState.RUNNING,
                reservation=Resources(cpu_millicores=request.cpu_millicores,
                                      memory_mib=request.memory_mib),
            )  # fmt: skip
        for stop in plan.stops:
            self.running[stop.node].pop(stop.replica_id, None)
        return plan

    def login(self, node: str) -> None:
        self.presence[node] = BUSY
        self.registry.presence(NodePresence(node=node, presence=BUSY))
        for replica_id, report in self.running[node].items():
            self.running[node][replica_id] = report.model_copy(
                update={"state": ReplicaState.PAUSED}
            )

    def per_node(self, app: str = "stereo") -> Counter[str]:
        return Counter(
            node for node, replicas in self.running.items() for r in replicas.values()
            if r.app == app and r.state is ReplicaState.RUNNING
        )  # fmt: skip


def thesis_job(replicas: int = 15, cpu: int = 1000) -> World:
    world = World()
    world.journal(QuotaSet(request_id="req-quota-01", namespace="alice", cpu_millicores=20_000,
                           memory_mib=65_536))  # fmt: skip
    world.journal(deploy("alice", "stereo", "req-dep-0001").model_copy(
        update={"replicas": replicas, "cpu_millicores": cpu, "memory_mib": 512,
                "node_selector": {}}))  # fmt: skip
    return world


def test_fifteen_replicas_start_once_each_and_the_status_says_running() -> None:
    world = thesis_job()
    first = world.tick()
    assert (
        len(first.starts) == 15
        and first.statuses[("alice", "stereo")].state is DeploymentState.PENDING
    )
    assert all(generation_of(start.replica_id) == 2 for start in first.starts)
    assert world.per_node() == {"edge": 6, "ninja": 3, "jonathan": 3, "penguin": 3}
    second = world.tick()
    assert not second.starts and not second.stops
    status = second.statuses[("alice", "stereo")]
    assert (status.state, status.running, status.desired) == (DeploymentState.RUNNING, 15, 15)


def test_a_person_at_a_pc_gets_replacements_elsewhere_then_the_paused_ones_are_evicted() -> None:
    world = thesis_job(replicas=12)
    world.tick()
    on_edge = set(world.running["edge"])
    world.login("edge")
    plan = world.reconciler.reconcile(world.desired, world.registry, world.now)
    assert len(plan.starts) == len(on_edge)
    assert {start.node for start in plan.starts} <= {"ninja", "jonathan", "penguin"}
    assert not plan.stops  # the paused ones stay until their replacements run
    world.now += 1
    for start in plan.starts:
        request = start.spec.request
        world.running[start.node][start.replica_id] = ReplicaReport(
            replica_id=start.replica_id, namespace="alice", app=request.app,
            state=ReplicaState.RUNNING, reservation=Resources(cpu_millicores=1000, memory_mib=512),
        )  # fmt: skip
    evicting = world.tick()
    assert {stop.replica_id for stop in evicting.stops} == on_edge
    assert all(stop.grace_s == 0 for stop in evicting.stops)
    assert world.tick().statuses[("alice", "stereo")].running == 12


def test_a_lost_pc_is_replaced_and_its_survivors_are_stopped_when_it_returns() -> None:
    world = thesis_job(replicas=8)
    world.tick()
    lost = dict(world.running["ninja"])
    world.dead = {"ninja"}
    world.tick(seconds=4.0)  # no heartbeat from ninja for more than node_timeout_s
    assert world.tick().statuses[("alice", "stereo")].running == 8
    world.dead = set()
    world.running["ninja"] = lost  # it comes back with its old replicas still running
    plan = world.tick()
    assert len(plan.stops) == len(lost)
    assert all(stop.reason == "more replicas run than asked" for stop in plan.stops)
    assert sum(world.per_node().values()) == 8


def test_scale_down_drain_and_redeploy() -> None:
    world = thesis_job(replicas=6)
    world.tick()
    world.journal(
        ScaleRequest(request_id="req-scale-01", namespace="alice", app="stereo", replicas=2)
    )
    assert len(world.tick().stops) == 4 and sum(world.per_node().values()) == 2
    world.journal(CordonRequest(request_id="req-drain-01", node="edge", action="drain"))
    world.tick()
    world.tick()
    assert world.per_node()["edge"] == 0 and sum(world.per_node().values()) == 2
    world.journal(deploy("alice", "stereo", "req-dep-0002").model_copy(
        update={"replicas": 2, "cpu_millicores": 1000, "memory_mib": 512,
                "node_selector": {}}))  # fmt: skip
    plan = world.tick()
    assert {s.reason for s in plan.stops} == {"its app was redeployed"} and len(plan.starts) == 2


def test_a_crashing_app_backs_off_and_node_refusals_do_not_count() -> None:
    world = thesis_job(replicas=1)
    start = world.tick().starts[0]
    failed = ReplicaStatus(node=start.node, replica_id=start.replica_id, namespace="alice",
                           app="stereo", state=ReplicaState.FAILED, at=AT, exit_code=1)  # fmt: skip
    world.reconciler.observe(failed, world.now)
    world.running[start.node].clear()
    waiting = world.tick(seconds=0.5)
    assert not waiting.starts
    assert waiting.statuses[("alice", "stereo")].reason.startswith("crashed 1 times")
    assert len(world.tick(seconds=2.0).starts) == 1
    for refusal in Refusal:  # the PC refused: says nothing about the app, whatever the words
        refused = failed.model_copy(
            update={"exit_code": None, "reason": "reworded at will", "refusal": refusal}
        )
        world.reconciler.observe(refused, world.now)
    assert world.reconciler._backoff[("alice", "stereo")].failures == 1
    # a failure in the old refusals' words, but not typed as a refusal, is the app's
    worded = failed.model_copy(update={"exit_code": None, "reason": "this PC is occupied"})
    world.reconciler.observe(worded, world.now)
    assert world.reconciler._backoff[("alice", "stereo")].failures == 2


def test_a_namespace_over_a_lowered_quota_loses_its_newest_replicas() -> None:
    world = thesis_job(replicas=6)
    world.tick()
    world.journal(QuotaSet(request_id="req-quota-02", namespace="alice", cpu_millicores=4000,
                           memory_mib=65_536))  # fmt: skip
    plan = world.tick()
    assert [stop.reason for stop in plan.stops] == ["its namespace is over its quota"] * 2
    assert sum(world.per_node().values()) == 4
    assert world.tick().statuses[("alice", "stereo")].reason == "alice runs its whole quota already"


def test_replicas_still_stopping_hold_the_quota_until_they_are_gone() -> None:
    """Quota 4000m, 4 x 1000m of app a scaled to 0 whose replicas take 3 ticks to exit;
    app b's 4 x 1000m start only once a's are gone: what runs never exceeds 4000m."""
    world = World()
    world.journal(QuotaSet(request_id="req-quota-01", namespace="alice", cpu_millicores=4000,
                           memory_mib=65_536))  # fmt: skip
    for app in ("a", "b"):
        world.journal(deploy("alice", app, f"req-dep-{app}").model_copy(update={
            "replicas": 4 if app == "a" else 0, "cpu_millicores": 1000, "memory_mib": 512,
            "node_selector": {}}))  # fmt: skip
    world.tick()
    assert sum(world.per_node("a").values()) == 4
    world.journal(ScaleRequest(request_id="req-scale-a", namespace="alice", app="a", replicas=0))
    world.journal(ScaleRequest(request_id="req-scale-b", namespace="alice", app="b", replicas=4))
    exiting: dict[str, dict[str, ReplicaReport]] = {}
    for tick in range(8):
        plan = world.tick()
        for stop in plan.stops:  # the PC was told; the replica handles SIGTERM slowly
            exiting.setdefault(stop.node, {})[stop.replica_id] = stopping(stop)
        for node, reports in exiting.items():
            for replica_id, report in reports.items():
                if tick < 3:
                    world.running[node][replica_id] = report
                else:  # it exited at last
                    world.running[node].pop(replica_id, None)
        runs = sum(len(replicas) for replicas in world.running.values())
        assert runs * 1000 <= 4000, f"tick {tick}: {runs} replicas run"
    assert sum(world.per_node("b").values()) == 4


def stopping(stop: Stop) -> ReplicaReport:
    """The report of a replica a stop was sent to, as its PC keeps sending it."""
    return ReplicaReport(
        replica_id=stop.replica_id, namespace="alice", app="a", state=ReplicaState.STOPPING,
        reservation=Resources(cpu_millicores=1000, memory_mib=512),
    )  # fmt: skip


def heartbeat(node: str, seq: int, replicas: int = 0) -> NodeHeartbeat:
    return NodeHeartbeat(
        node=node, seq=seq, sent_at=AT, capacity=Resources(cpu_millicores=4000, memory_mib=4096),
        allocatable=Resources(cpu_millicores=4000, memory_mib=4096), usage=Resources(),
        presence=IDLE, replicas=tuple(
            ReplicaReport(replica_id=f"r{i}", namespace="alice", app="a",
                          state=ReplicaState.RUNNING, reservation=Resources(cpu_millicores=100))
            for i in range(replicas)),
    )  # fmt: skip


def test_a_heartbeat_from_far_ahead_is_refused_and_the_pcs_next_one_is_taken() -> None:
    registry = Registry(node_timeout_s=3.0)
    assert registry.heartbeat(heartbeat("edge", 41, replicas=2), now=10.0)
    forged = heartbeat("edge", 2**53 - 1)  # the schema's bound: no further
    assert not registry.heartbeat(forged, now=10.5)  # 50 beats a second at most since
    assert registry.heartbeat(heartbeat("edge", 42, replicas=2), now=11.0)
    assert registry.nodes["edge"].seq == 42 and len(registry.nodes["edge"].replicas) == 2
    assert not registry.heartbeat(heartbeat("edge", 40), now=11.1)  # late: ignored
    assert registry.heartbeat(heartbeat("edge", 1), now=12.0)  # the agent restarted
    assert registry.heartbeat(heartbeat("edge", 2), now=13.0)
    # a count it never reached (a fresh registry took a bogus one first) heals at once
    fresh = Registry(node_timeout_s=3.0)
    fresh.heartbeat(heartbeat("edge", 10**12), now=0.0)
    assert fresh.heartbeat(heartbeat("edge", 43, replicas=1), now=1.0)
    assert not fresh.lost(fresh.nodes["edge"], now=2.0)
    assert len(fresh.nodes["edge"].replicas) == 1


def test_a_sign_of_life_keeps_the_pc_and_what_its_last_heartbeat_said() -> None:
    registry = Registry(node_timeout_s=3.0)
    assert not registry.alive(NodeAlive(node="edge", seq=5, sent_at=AT), now=0.0)  # unknown
    assert "edge" not in registry.nodes
    assert registry.heartbeat(heartbeat("edge", 5, replicas=2), now=0.0)
    for second in range(1, 10):  # only signs of life for nine seconds: never lost
        assert registry.alive(NodeAlive(node="edge", seq=5 + second, sent_at=AT), now=second)
        assert not registry.lost(registry.nodes["edge"], now=second + 2.9)
    assert len(registry.nodes["edge"].replicas) == 2 and registry.nodes["edge"].seq == 14
    assert not registry.alive(NodeAlive(node="edge", seq=12, sent_at=AT), now=9.5)  # late
    assert not registry.alive(NodeAlive(node="edge", seq=2**53 - 1, sent_at=AT), now=9.5)
    assert registry.lost(registry.nodes["edge"], now=12.1)  # silent for 3 s: lost


def test_replicas_not_yet_reported_running_count_as_starting_not_running() -> None:
    world = thesis_job(replicas=3)
    first = world.tick().statuses[("alice", "stereo")]
    assert (first.running, first.starting, first.reason) == (0, 3, "starting 3")
    for node, replicas in world.running.items():  # the PCs report them as still starting
        for rid, report in replicas.items():
            world.running[node][rid] = report.model_copy(update={"state": ReplicaState.STARTING})
    world.now += 1.0
    world.beat()
    booting = world.reconciler.reconcile(world.desired, world.registry, world.now)
    status = booting.statuses[("alice", "stereo")]
    assert (status.running, status.starting, status.per_node) == (0, 3, {})
    assert booting.starts == []  # not started twice


def test_a_tick_in_slices_plans_as_a_whole_one_and_survives_a_deletion_between_any_two() -> None:
    """The placement leader takes a tick in slices (``Reconciler.steps``) and handles
    events between them: sliced or whole, the same world gets the same plan; an app
    deleted between any two slices breaks nothing, and deleted before its survey ends it
    gets no start."""
    desired, registry = world(pcs=1500, per_pc=2)  # 100 apps, 3,000 replicas, at their counts
    for node in list(registry.nodes.values())[::10]:  # a class comes into one PC in ten
        node.presence = PresenceState.BUSY  # its replicas are displaced: replacements wanted
    whole = Reconciler(suffixes=lambda: "00000000").reconcile(desired, registry, now=1.0)
    pauses: list[None] = []
    sliced = finish(Reconciler(suffixes=lambda: "00000000").steps(desired, registry, 1.0),
                    lambda: pauses.append(None))  # fmt: skip
    assert len(pauses) >= 5 and len(whole.starts) == 300
    assert [(s.node, s.spec.key) for s in sliced.starts] == [
        (s.node, s.spec.key) for s in whole.starts
    ]
    assert sliced.stops == whole.stops and sliced.statuses == whole.statuses
    key = whole.starts[0].spec.key  # an app with replacements to start
    for at in range(len(pauses)):
        spec = desired.deployments[key]
        pause = itertools.count()

        def delete(at: int = at, pause: Iterator[int] = pause) -> None:
            if next(pause) == at:
                del desired.deployments[key]  # its DeleteRequest applied meanwhile

        plan = finish(Reconciler(suffixes=lambda: "00000000").steps(desired, registry, 1.0),
                      delete)  # fmt: skip
        if at == 0:
            assert plan.starts and all(start.spec.key != key for start in plan.starts)
        desired.deployments[key] = spec
