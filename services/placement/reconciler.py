"""The reconciler: desired state against actual state, turned into commands (pure).

Theory of operation
-------------------
Each tick the placement leader calls :meth:`Reconciler.reconcile` with the desired state
(from the journal), the registry (from heartbeats) and the time. A tick runs in passes:
survey the live PCs, count the starts in flight, enforce quotas and replica counts into
wants, place the wants, preempt for fair share, and report each app's status. The
survey puts every replica a live PC reports in one bucket:

* **ended** (exited or failed), or of an app that was **deleted** or **redeployed** (its id
  carries the deploy's generation): stop it;
* **healthy**: running on an idle PC that is not being drained;
* **displaced**: paused on a busy PC, or on a PC being drained. It does not count as
  running. Once a replacement runs elsewhere, one displaced replica is stopped (a busy
  PC's agent evicts it at once), unless the rule of :mod:`.eviction` keeps it paused a
  while for the work it would lose (then one that may go is stopped instead); healthy
  plus displaced exceeds desired only by replicas kept paused, which use no CPU.

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

The reconciler draws nothing itself: the time comes with each tick and the random part
of new replica ids from the ``suffixes`` its owner gives it. A tick may be taken in slices
(:meth:`Reconciler.steps`): the survey, nearly all of a tick's time (4 µs a replica),
pauses every :data:`SLICE_REPLICAS` replicas, so the placement leader's loop, which also
takes every PC's heartbeats, is never held for a whole tick at campus scale.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from schemas import ZERO, Amount, DeploymentState, PresenceState, ReplicaState, ReplicaStatus
from services.placement.eviction import keep_paused
from services.placement.registry import KnownReplica, NodeInfo, Registry
from services.placement.scheduler import (
    NodeSlot,
    Schedule,
    Snapshot,
    Want,
    finish,
    preemption,
    scheduling,
)
from services.state import AppKey, DesiredState, Spec

__all__ = [
    "SLICE_REPLICAS",
    "AppStatus",
    "Plan",
    "Reconciler",
    "ReconcilerSettings",
    "Start",
    "Stop",
    "replica_id",
]

#: A tick's survey pauses after about this many replicas (and PCs): about 2-4 ms here.
SLICE_REPLICAS = 1000
_ENDED = (ReplicaState.EXITED, ReplicaState.FAILED)
#: States in which a replica's processes may run (and so spend its namespace's quota).
_RUNS = (ReplicaState.STARTING, ReplicaState.RUNNING, ReplicaState.STOPPING)


def replica_id(app: str, generation: int, suffix: str) -> str:
    """A new replica id: ``<app>-<generation>-<suffix>``, a DNS label."""
    return f"{app[:40]}-{generation:x}-{suffix}"


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
    #: A paused replica with unsaved work waits at most this long (see ``eviction``).
    keep_paused_max_s: float = 300.0
    #: Less unsaved work than this is evicted as soon as a replacement runs.
    evict_below_s: float = 5.0


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


@dataclass(frozen=True, slots=True)
class _InFlight:
    key: AppKey
    node: str
    at: float
    size: Amount


@dataclass(frozen=True, slots=True)
class _Backoff:
    failures: int
    until: float
    last_at: float


@dataclass(slots=True)
class _Tally:
    """One app's replicas by bucket: (replica id, node) pairs, oldest first."""

    healthy: list[tuple[str, str]] = field(default_factory=list)
    displaced: list[tuple[str, str]] = field(default_factory=list)
    unsaved_s: dict[str, float | None] = field(default_factory=dict)  # of each displaced
    starting: int = 0  # sent, not yet reported
    booting: set[str] = field(default_factory=set)  # healthy, but reported still starting


@dataclass(slots=True)
class _Survey:
    """What one tick saw: each app's tally, the PCs that may take work, and what each
    namespace holds (``usage``: healthy and starting; ``held``: and the stopping that run)."""

    live: list[NodeInfo]
    tallies: defaultdict[AppKey, _Tally] = field(default_factory=lambda: defaultdict(_Tally))
    seen: set[str] = field(default_factory=set)
    slots: dict[str, NodeSlot] = field(default_factory=dict)
    usage: defaultdict[str, Amount] = field(default_factory=lambda: defaultdict(Amount))
    held: defaultdict[str, Amount] = field(default_factory=lambda: defaultdict(Amount))


class Reconciler:
    """Turns desired and actual state into starts, stops and statuses; see the header."""

    def __init__(
        self, settings: ReconcilerSettings | None = None, *, suffixes: Callable[[], str]
    ) -> None:
        """``suffixes`` gives the random part of each new replica id (8 hex digits)."""
        self.settings = settings or ReconcilerSettings()
        self._suffixes = suffixes
        self._in_flight: dict[str, _InFlight] = {}
        self._stopping: dict[str, float] = {}
        #: Since when each displaced replica is displaced.
        self._displaced: dict[str, float] = {}
        self._backoff: dict[AppKey, _Backoff] = {}
        self._preempted_at = -float("inf")

    def observe(self, status: ReplicaStatus, now: float) -> None:
        """A replica status event: a failed start or a crash counts toward backing off."""
        if status.state is not ReplicaState.FAILED:
            return
        self._in_flight.pop(status.replica_id, None)
        if status.refusal is not None:
            return  # the PC refused it: nothing is known about the app
        key = (status.namespace, status.app)
        backoff = self._backoff.get(key)
        failures = 1 if backoff is None else backoff.failures + 1
        delay_s = min(
            self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (failures - 1)
        )
        self._backoff[key] = _Backoff(failures, now + delay_s, now)

    def not_sent(self, start: Start) -> None:
        """A start the owner could not send (no token): it is not in flight."""
        self._in_flight.pop(start.replica_id, None)

    def reconcile(self, desired: DesiredState, registry: Registry, now: float) -> Plan:
        """One tick: what to start, what to stop, and how every app is doing."""
        return finish(self.steps(desired, registry, now))

    def steps(
        self, desired: DesiredState, registry: Registry, now: float
    ) -> Generator[None, None, Plan]:
        """One tick in slices: it pauses (yields) after every :data:`SLICE_REPLICAS` or so
        replicas surveyed, so that its owner can let other work run, and returns the plan.
        The registry may change between slices: each PC is taken as it was when its
        slice came, as if its heartbeat had come a moment earlier or later."""
        plan = Plan()
        survey = yield from self._survey(plan, desired, registry, now)
        self._count_in_flight(survey, now)
        sizes = {key: spec.reservation for key, spec in desired.deployments.items()}
        self._enforce_quotas(plan, desired, survey, sizes, now)
        wants = self._wants(plan, desired, survey.tallies, now)
        yield  # (an app deleted meanwhile is not started: see ``_start``)
        snapshot = Snapshot(
            list(survey.slots.values()), wants, dict(survey.held), dict(desired.quotas),
            sum((node.allocatable for node in survey.live), ZERO),
        )  # fmt: skip
        placed = yield from scheduling(snapshot)
        self._start(plan, desired, survey.tallies, placed, now)
        self._preempt(plan, snapshot, placed, survey.tallies, sizes, now)
        yield  # (an app deleted meanwhile has a status for this tick, and is gone the next)
        yield from self._statuses(plan, desired, survey.tallies, placed.unplaced, now)
        return plan

    def _survey(
        self, plan: Plan, desired: DesiredState, registry: Registry, now: float
    ) -> Generator[None, None, _Survey]:
        """Bucket every replica on a live PC; stop the ended, deleted and redeployed."""
        survey = _Survey([node for node in registry.nodes.values() if not registry.lost(node, now)])
        since_pause = 0
        for node in survey.live:
            if since_pause >= SLICE_REPLICAS:
                yield
                since_pause = 0
            since_pause += len(node.replicas) + 1
            used = ZERO
            drained = desired.cordons.get(node.name) == "drain"
            busy = node.presence is PresenceState.BUSY
            for replica in node.replicas.values():
                survey.seen.add(replica.replica_id)
                used += replica.reservation
                if not busy and replica.state in _RUNS:
                    survey.held[replica.namespace] += replica.reservation
                why = self._why_stop(replica, desired)
                if why is not None:
                    self._stop(plan, replica.replica_id, node.name, why, now, grace_s=0)
                    continue
                if replica.replica_id in self._stopping:
                    continue
                tally = survey.tallies[replica.key]
                if busy or drained or replica.state is ReplicaState.PAUSED:
                    tally.displaced.append((replica.replica_id, node.name))
                    tally.unsaved_s[replica.replica_id] = replica.unsaved_s
                    self._displaced.setdefault(replica.replica_id, now)
                else:
                    tally.healthy.append((replica.replica_id, node.name))
                    if replica.state is ReplicaState.STARTING:
                        tally.booting.add(replica.replica_id)
                    survey.usage[replica.namespace] += replica.reservation
            if not busy and node.name not in desired.cordons:
                slot = NodeSlot(node.name, node.allocatable - used, node.capacity, node.labels)
                survey.slots[node.name] = slot
        yield
        for rid in [r for r in self._stopping if r not in survey.seen]:
            del self._stopping[rid]  # gone: the stop worked
        displaced = {rid for tally in survey.tallies.values() for rid, _ in tally.displaced}
        for rid in [r for r in self._displaced if r not in displaced]:
            del self._displaced[rid]  # resumed, stopped or gone
        yield
        for key, tally in survey.tallies.items():  # each PC's healthy replicas per app
            for _, where in tally.healthy:
                if (holder := survey.slots.get(where)) is not None:
                    holder.apps[key] = holder.apps.get(key, 0) + 1
        yield
        return survey

    def _count_in_flight(self, survey: _Survey, now: float) -> None:
        """Starts sent and not yet reported count as healthy and hold their PC's room."""
        for rid, start in list(self._in_flight.items()):
            slot = survey.slots.get(start.node)
            if rid in survey.seen or slot is None or now - start.at > self.settings.start_timeout_s:
                del self._in_flight[rid]  # reported, or its PC was lost or became busy
                continue
            survey.tallies[start.key].starting += 1
            survey.usage[start.key[0]] += start.size
            survey.held[start.key[0]] += start.size
            slot.free -= start.size

    def _enforce_quotas(
        self,
        plan: Plan,
        desired: DesiredState,
        survey: _Survey,
        sizes: dict[AppKey, Amount],
        now: float,
    ) -> None:
        """A namespace running beyond its quota loses its newest replicas."""
        for namespace, quota in desired.quotas.items():
            if namespace not in survey.usage:
                continue
            apps = [(key, t) for key, t in survey.tallies.items()
                    if key[0] == namespace and key in sizes]  # fmt: skip
            while survey.usage[namespace].shortfall(quota) is not None:
                candidates = [(key, t) for key, t in apps if t.healthy]
                if not candidates:
                    break
                key, tally = max(candidates, key=lambda pair: len(pair[1].healthy))
                rid, node = tally.healthy.pop()
                survey.usage[namespace] -= sizes[key]
                self._stop(plan, rid, node, "its namespace is over its quota", now)

    def _wants(
        self, plan: Plan, desired: DesiredState, tallies: dict[AppKey, _Tally], now: float
    ) -> list[Want]:
        """Per app: stop the surplus and the displaced whose replacements run; want the
        missing, unless the app is backing off after crashes."""
        wants = []
        for key, spec in desired.deployments.items():
            tally = tallies[key]
            self._stop_surplus(plan, tally, spec.replicas, now)
            replaced = len(tally.healthy) + len(tally.displaced) - spec.replicas
            evictable = [(rid, node) for rid, node in tally.displaced
                         if not self._kept_paused(rid, tally.unsaved_s[rid], now)]  # fmt: skip
            for rid, node in evictable[: max(0, replaced)]:  # their replacements run
                self._stop(plan, rid, node, "its replacement runs elsewhere", now, grace_s=0)
            missing = spec.replicas - len(tally.healthy) - tally.starting
            backoff = self._backoff.get(key)
            if backoff is not None and now - backoff.last_at > self.settings.backoff_reset_s:
                del self._backoff[key]
                backoff = None
            if missing > 0 and (backoff is None or now >= backoff.until):
                wants.append(Want(key, missing, spec.reservation, spec.request.node_selector))
        return wants

    def _kept_paused(self, replica_id: str, unsaved_s: float | None, now: float) -> bool:
        paused_for_s = now - self._displaced[replica_id]
        settings = self.settings
        return keep_paused(unsaved_s, paused_for_s, keep_paused_max_s=settings.keep_paused_max_s,
                           evict_below_s=settings.evict_below_s)  # fmt: skip

    def _stop_surplus(self, plan: Plan, tally: _Tally, desired: int, now: float) -> None:
        """More healthy and starting than desired: stop the newest on the most crowded PC."""
        surplus = min(len(tally.healthy) + tally.starting - desired, len(tally.healthy))
        if surplus <= 0:
            return
        counts: dict[str, int] = defaultdict(int)
        for _, node in tally.healthy:
            counts[node] += 1
        for _ in range(surplus):
            crowded = max(counts, key=lambda n: counts[n])
            index = max(i for i, (_, n) in enumerate(tally.healthy) if n == crowded)
            rid, node = tally.healthy.pop(index)
            counts[node] -= 1
            self._stop(plan, rid, node, "more replicas run than asked", now)

    def _start(
        self,
        plan: Plan,
        desired: DesiredState,
        tallies: dict[AppKey, _Tally],
        placed: Schedule,
        now: float,
    ) -> None:
        """A start for every placement, in flight until its PC reports it."""
        for key, node_name in placed.placements:
            spec = desired.deployments.get(key)
            if spec is None:
                continue  # deleted while the tick was placing it
            rid = replica_id(key[1], spec.generation, self._suffixes())
            plan.starts.append(Start(rid, node_name, spec))
            self._in_flight[rid] = _InFlight(key, node_name, now, spec.reservation)
            tallies[key].starting += 1

    def _preempt(
        self,
        plan: Plan,
        snapshot: Snapshot,
        placed: Schedule,
        tallies: dict[AppKey, _Tally],
        sizes: dict[AppKey, Amount],
        now: float,
    ) -> None:
        """At most one replica per ``preempt_interval_s`` stops for fair share."""
        if not placed.unplaced or now - self._preempted_at < self.settings.preempt_interval_s:
            return
        running = {key: tally.healthy for key, tally in tallies.items()}
        victim = preemption(snapshot, placed, running, sizes)
        if victim is not None:
            self._preempted_at = now
            self._stop(plan, victim[0], victim[1], "preempted for fair share", now)

    def _why_stop(self, replica: KnownReplica, desired: DesiredState) -> str | None:
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

    def _statuses(
        self,
        plan: Plan,
        desired: DesiredState,
        tallies: dict[AppKey, _Tally],
        unplaced: dict[AppKey, str],
        now: float,
    ) -> Generator[None, None, None]:
        since_pause = 0
        for key, spec in list(desired.deployments.items()):
            if since_pause >= SLICE_REPLICAS:
                yield
                since_pause = 0
            tally = tallies[key]
            since_pause += len(tally.healthy) + 1
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
