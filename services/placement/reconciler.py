"""The reconciler: desired state against actual state, turned into commands (pure).

Theory of operation
-------------------
Each tick the placement leader calls :meth:`Reconciler.reconcile` with the desired state
(from the journal), the registry (from heartbeats) and the time. Every replica a live PC
reports falls in one bucket:

* **ended** (exited or failed), or of an app that was **deleted** or **redeployed** (its id
  carries the deploy's generation): stop it;
* **healthy**: running on an idle PC that is not being drained;
* **displaced**: paused on a busy PC, or on a PC being drained. It does not count as
  running. As soon as a replacement runs elsewhere, one displaced replica is stopped
  (healthy + displaced never exceeds desired for long): a busy PC's agent evicts it at
  once.

Replicas on lost PCs count for nothing; if their PC comes back they are healthy again,
and the surplus is stopped. Starts already sent but not yet reported (``in flight``, up
to ``start_timeout_s``, while their PC stays idle and live) count as healthy and hold
their PC's resources, so a tick never starts a replica twice. Per app: surplus healthy
replicas are stopped (from the PC with most of them, newest first); missing ones become
a :class:`~.scheduler.Want` for the scheduler, unless the app is backing off after
crashes (``backoff_base_s`` doubling per failure up to ``backoff_max_s``, forgotten
after ``backoff_reset_s`` without one).

Quota is about what runs: a replica still running while it is being stopped (its app
scaled down, deleted or redeployed, or preempted) holds its namespace's quota until its
PC stops reporting it (its agent kills it after the stop's grace period at the latest),
so replacements wait for it and a namespace never runs more than its quota. A namespace
running beyond its quota (an admin lowered it) loses its newest replicas. When
capacity is short, at most one replica per ``preempt_interval_s`` is stopped for fair
share (see :func:`~.scheduler.preemption`). Every tick also yields each app's status:
running (all desired replicas run), pending (none does) or degraded, with the reason.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from schemas import DeploymentState, PresenceState, ReplicaState, ReplicaStatus
from services.placement.registry import Registry, ReplicaInfo
from services.placement.scheduler import NodeSlot, Snapshot, Want, preemption, schedule
from services.state import AppKey, DesiredState, Spec

__all__ = ["AppStatus", "Plan", "Reconciler", "ReconcilerSettings", "Start", "Stop", "replica_id"]

_ENDED = (ReplicaState.EXITED, ReplicaState.FAILED)
#: States in which a replica's processes may run (and so spend its namespace's quota).
_RUNS = (ReplicaState.STARTING, ReplicaState.RUNNING, ReplicaState.STOPPING)
#: Refusals that say something about the PC, not the app: no reason to back off.
_NODE_REFUSALS = ("this PC is", "needs ")


def replica_id(app: str, generation: int) -> str:
    """A new replica id: ``<app>-<generation>-<random>``, a DNS label."""
    return f"{app[:40]}-{generation:x}-{uuid.uuid4().hex[:8]}"


def generation_of(replica: str) -> int | None:
    """The deploy generation a replica id names, or None for a foreign id."""
    parts = replica.rsplit("-", 2)
    try:
        return int(parts[1], 16) if len(parts) == 3 else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ReconcilerSettings:
    """How patient the reconciler is."""

    start_timeout_s: float = 15.0
    stop_retry_s: float = 10.0
    backoff_base_s: float = 2.0
    backoff_max_s: float = 60.0
    backoff_reset_s: float = 120.0
    preempt_interval_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Start:
    """Start a new replica of ``spec`` on ``node``."""

    replica_id: str
    node: str
    spec: Spec


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop a replica on ``node`` (SIGKILL at once if ``grace_s`` is 0 or it is paused)."""

    replica_id: str
    node: str
    reason: str
    grace_s: float = 10.0


@dataclass(frozen=True, slots=True)
class AppStatus:
    """An app's state against what its owner asked for."""

    key: AppKey
    state: DeploymentState
    desired: int
    running: int
    per_node: dict[str, int]
    reason: str = ""
    starting: int = 0  # sent and not yet reported, or reported as still starting


@dataclass(slots=True)
class Plan:
    """What one tick decided."""

    starts: list[Start] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)
    statuses: dict[AppKey, AppStatus] = field(default_factory=dict)


@dataclass(slots=True)
class _InFlight:
    key: AppKey
    node: str
    at: float
    cpu_millicores: int
    memory_mib: int


@dataclass(slots=True)
class _Backoff:
    failures: int
    until: float
    last_at: float


@dataclass(slots=True)
class _Tally:
    """One app's replicas by bucket: (replica id, node) pairs, oldest first."""

    healthy: list[tuple[str, str]] = field(default_factory=list)
    displaced: list[tuple[str, str]] = field(default_factory=list)
    starting: int = 0  # sent, not yet reported
    booting: set[str] = field(default_factory=set)  # healthy, but reported still starting


class Reconciler:
    """Turns desired and actual state into starts, stops and statuses; see the header."""

    def __init__(self, settings: ReconcilerSettings | None = None) -> None:
        self.settings = settings or ReconcilerSettings()
        self.in_flight: dict[str, _InFlight] = {}
        self._stopping: dict[str, float] = {}
        self._backoff: dict[AppKey, _Backoff] = {}
        self._preempted_at = -float("inf")

    def observe(self, status: ReplicaStatus, now: float) -> None:
        """A replica status event: a failed start or a crash counts toward backing off."""
        if status.state is not ReplicaState.FAILED:
            return
        self.in_flight.pop(status.replica_id, None)
        if status.reason.startswith(_NODE_REFUSALS):
            return
        key = (status.namespace, status.app)
        backoff = self._backoff.get(key)
        failures = 1 if backoff is None else backoff.failures + 1
        delay_s = min(
            self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (failures - 1)
        )
        self._backoff[key] = _Backoff(failures, now + delay_s, now)

    def reconcile(self, desired: DesiredState, registry: Registry, now: float) -> Plan:
        """One tick: what to start, what to stop, and how every app is doing."""
        plan = Plan()
        tallies: dict[AppKey, _Tally] = defaultdict(_Tally)
        seen: set[str] = set()
        slots: list[NodeSlot] = []
        usage: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # healthy and starting
        held: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # and the stopping that run
        sizes = {key: (spec.request.cpu_millicores, spec.request.memory_mib)
                 for key, spec in desired.deployments.items()}  # fmt: skip
        live = [node for node in registry.nodes.values() if not registry.lost(node, now)]
        for node in live:
            used = [0, 0]
            drained = desired.cordons.get(node.name) == "drain"
            busy = node.presence is PresenceState.BUSY
            for replica in node.replicas.values():
                seen.add(replica.replica_id)
                used[0] += replica.cpu_millicores
                used[1] += replica.memory_mib
                if not busy and replica.state in _RUNS:
                    held[replica.namespace][0] += replica.cpu_millicores
                    held[replica.namespace][1] += replica.memory_mib
                why = self._why_stop(replica, desired)
                if why is not None:
                    self._stop(plan, replica.replica_id, node.name, why, now, grace_s=0)
                    continue
                if replica.replica_id in self._stopping:
                    continue
                tally = tallies[replica.key]
                if busy or drained or replica.state is ReplicaState.PAUSED:
                    tally.displaced.append((replica.replica_id, node.name))
                else:
                    tally.healthy.append((replica.replica_id, node.name))
                    if replica.state is ReplicaState.STARTING:
                        tally.booting.add(replica.replica_id)
                    usage[replica.namespace][0] += replica.cpu_millicores
                    usage[replica.namespace][1] += replica.memory_mib
            if not busy and node.name not in desired.cordons:
                slots.append(NodeSlot(
                    node.name, node.allocatable[0] - used[0], node.allocatable[1] - used[1],
                    node.capacity[0], node.capacity[1], node.labels,
                ))  # fmt: skip
        for rid in [r for r in self._stopping if r not in seen]:
            del self._stopping[rid]  # gone: the stop worked
        by_name = {slot.name: slot for slot in slots}
        for rid, start in list(self.in_flight.items()):
            slot = by_name.get(start.node)
            if rid in seen or slot is None or now - start.at > self.settings.start_timeout_s:
                del self.in_flight[rid]  # reported, or its PC was lost or became busy
                continue
            tallies[start.key].starting += 1
            for counted in (usage, held):
                counted[start.key[0]][0] += start.cpu_millicores
                counted[start.key[0]][1] += start.memory_mib
            slot.free_cpu_millicores -= start.cpu_millicores
            slot.free_memory_mib -= start.memory_mib
        for slot in slots:
            for key, tally in tallies.items():
                count = sum(1 for _, where in tally.healthy if where == slot.name)
                if count:
                    slot.apps[key] = count
        wants = self._wants(plan, desired, tallies, usage, sizes, now)
        total = (sum(n.allocatable[0] for n in live), sum(n.allocatable[1] for n in live))
        snapshot = Snapshot(
            slots, wants, {ns: (u[0], u[1]) for ns, u in held.items()},
            {ns: (q.cpu_millicores, q.memory_mib) for ns, q in desired.quotas.items()}, total,
        )  # fmt: skip
        scheduled = schedule(snapshot)
        for key, node_name in scheduled.placements:
            spec = desired.deployments[key]
            rid = replica_id(key[1], spec.generation)
            plan.starts.append(Start(rid, node_name, spec))
            self.in_flight[rid] = _InFlight(key, node_name, now, *sizes[key])
            tallies[key].starting += 1
        if scheduled.unplaced and now - self._preempted_at >= self.settings.preempt_interval_s:
            running = {key: tally.healthy for key, tally in tallies.items()}
            victim = preemption(snapshot, scheduled, running, sizes)
            if victim is not None:
                self._preempted_at = now
                self._stop(plan, victim[0], victim[1], "preempted for fair share", now)
        self._statuses(plan, desired, tallies, scheduled.unplaced, now)
        return plan

    def _why_stop(self, replica: ReplicaInfo, desired: DesiredState) -> str | None:
        if replica.state in _ENDED:
            return f"it {replica.state.value}"
        spec = desired.deployments.get(replica.key)
        if spec is None:
            return "its app was deleted"
        if generation_of(replica.replica_id) != spec.generation:
            return "its app was redeployed"
        return None

    def _stop(
        self, plan: Plan, rid: str, node: str, reason: str, now: float, grace_s: float = 10.0
    ) -> None:
        sent_at = self._stopping.get(rid)
        if sent_at is not None and now - sent_at < self.settings.stop_retry_s:
            return
        self._stopping[rid] = now
        plan.stops.append(Stop(rid, node, reason, grace_s))

    def _wants(
        self,
        plan: Plan,
        desired: DesiredState,
        tallies: dict[AppKey, _Tally],
        usage: dict[str, list[int]],
        sizes: dict[AppKey, tuple[int, int]],
        now: float,
    ) -> list[Want]:
        wants = []
        for namespace, quota in desired.quotas.items():
            used = usage.get(namespace)
            apps = [(key, t) for key, t in tallies.items() if key[0] == namespace and key in sizes]
            while used is not None and (
                used[0] > quota.cpu_millicores or used[1] > quota.memory_mib
            ):
                candidates = [(key, t) for key, t in apps if t.healthy]
                if not candidates:
                    break
                key, tally = max(candidates, key=lambda pair: len(pair[1].healthy))
                rid, node = tally.healthy.pop()
                used[0] -= sizes[key][0]
                used[1] -= sizes[key][1]
                self._stop(plan, rid, node, "its namespace is over its quota", now)
        for key, spec in desired.deployments.items():
            tally = tallies[key]
            have = len(tally.healthy) + tally.starting
            if have > spec.replicas:
                counts: dict[str, int] = defaultdict(int)
                for _, node in tally.healthy:
                    counts[node] += 1
                for _ in range(min(have - spec.replicas, len(tally.healthy))):
                    crowded = max(counts, key=lambda n: counts[n])
                    index = max(i for i, (_, n) in enumerate(tally.healthy) if n == crowded)
                    rid, node = tally.healthy.pop(index)
                    counts[node] -= 1
                    self._stop(plan, rid, node, "more replicas run than asked", now)
            replaced = len(tally.healthy) + len(tally.displaced) - spec.replicas
            for rid, node in tally.displaced[: max(0, replaced)]:  # their replacements run
                self._stop(plan, rid, node, "its replacement runs elsewhere", now, grace_s=0)
            missing = spec.replicas - len(tally.healthy) - tally.starting
            backoff = self._backoff.get(key)
            if backoff is not None and now - backoff.last_at > self.settings.backoff_reset_s:
                del self._backoff[key]
                backoff = None
            if missing > 0 and (backoff is None or now >= backoff.until):
                request = spec.request
                wants.append(Want(key, missing, request.cpu_millicores, request.memory_mib,
                                  request.node_selector))  # fmt: skip
        return wants

    def _statuses(
        self,
        plan: Plan,
        desired: DesiredState,
        tallies: dict[AppKey, _Tally],
        unplaced: dict[AppKey, str],
        now: float,
    ) -> None:
        for key, spec in desired.deployments.items():
            tally = tallies[key]
            per_node: dict[str, int] = defaultdict(int)
            for rid, node in tally.healthy:
                if rid not in tally.booting:
                    per_node[node] += 1
            running = sum(per_node.values())
            starting = tally.starting + sum(1 for rid, _ in tally.healthy if rid in tally.booting)
            reason = unplaced.get(key, "")
            backoff = self._backoff.get(key)
            if backoff is not None and now < backoff.until:
                reason = (
                    f"crashed {backoff.failures} times; next start in {backoff.until - now:.0f} s"
                )
            elif not reason and starting:
                reason = f"starting {starting}"
            if running >= spec.replicas:
                state, reason = DeploymentState.RUNNING, ""
            elif running == 0:
                state = DeploymentState.PENDING
            else:
                state = DeploymentState.DEGRADED
            plan.statuses[key] = AppStatus(
                key, state, spec.replicas, running, dict(per_node), reason, starting
            )
