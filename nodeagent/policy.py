"""The presence policy: when a PC may run the platform's replicas (pure: no I/O, no clock).

Theory of operation
-------------------
A PC belongs first to the person at its keyboard. The agent's signal sources (login
sessions from utmp, input activity, CPU load of processes that are not the platform's, a
weekly timetable of class hours) each report an observation; this policy turns the
stream of observations into one of five phases (``sharing`` only in ``coexist`` mode)
and the actions that go with them:

``warming``
    Nobody is here, but not yet for ``start_idle_s`` (HTCondor waits 15 minutes of
    keyboard idleness). No replica may start.
``available``
    Idle long enough: replicas may run (the only phase that accepts work).
``occupied``
    Someone is here. Entering it from ``available`` pauses every replica at once, before
    anyone is told (the person must never wait for the network). Paused replicas are
    evicted when the placement service says their replacements run, or after
    ``max_suspend_s`` at the latest; if the person leaves first, they resume.
``cooling``
    The person left while replicas were paused. They stay paused until the PC has been
    quiet for ``continue_idle_s`` (hysteresis: a person who steps away for a minute does
    not get the platform back under their fingers), then resume. A person who leaves
    after the eviction, or a PC that ran nothing, goes back to ``warming`` instead: new
    work waits for ``start_idle_s`` of quiet, and never less than ``continue_idle_s``
    after a person was there.
``sharing``
    Only in ``coexist`` mode, and only outside the timetable's blocks (class hours
    suspend, as above): someone is here and replicas keep running beside them, at the
    lowest scheduling class, within a reduced share of the PC. Entering it stops the
    newest replicas until the rest fit that share (``FIT_SHARE``). Two fast signals, read
    every 50 ms, freeze them all at once (``PAUSE_ALL``): the person's own
    processes leave fewer than ``coexist_min_idle_cores`` cores idle, or less than
    ``coexist_memory_floor_mib`` of memory is available, in which case the newest
    replica is also stopped every ``memory_evict_every_s`` while it lasts (freezing
    frees no memory). So does a burst of input: input with no gap of ``input_gap_s`` for
    ``coexist_input_burst_s`` (a game, a drawing; typing has gaps). They thaw once every
    signal has been calm for ``thaw_after_s``.
    While frozen the PC takes no work and reports itself busy; frozen replicas are
    evicted like paused ones. When the person leaves, the PC is ``available`` at once.

Signals and their thresholds: a login session counts at once; input counts for
``input_active_s`` after the last event; foreign CPU load counts once it stayed above
``busy_load`` cores for ``busy_load_for_s`` (a brief spike is not a person); a timetable
block counts while it lasts. Any active signal means presence; the cause reported is the
strongest one (session, input, load, timetable).

The policy never reads a clock: every call carries the time (monotonic seconds), and every
decision says when, at the latest, the policy wants to be asked again (``next_check_at``),
so the agent needs no polling loop for the policy itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum, StrEnum

from schemas import PresenceCause, PresenceMode, PresenceState

__all__ = ["Action", "Decision", "Observation", "Phase", "PolicySettings", "PresencePolicy"]


class Phase(StrEnum):
    """Where the PC is in the policy's cycle."""

    WARMING = "warming"
    AVAILABLE = "available"
    OCCUPIED = "occupied"
    COOLING = "cooling"
    SHARING = "sharing"


class Action(Enum):
    """What the agent must do to its replicas as a result of a decision."""

    PAUSE_ALL = "pause all replicas"
    RESUME_ALL = "resume the paused replicas"
    EVICT_PAUSED = "stop the paused replicas (SIGKILL)"
    FIT_SHARE = "stop the newest replicas until the rest fit the shared allocatable"
    EVICT_NEWEST = "stop the newest live replica (memory is short)"


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The policy's thresholds (HTCondor's desktop policy, made faster)."""

    start_idle_s: float = 900.0
    continue_idle_s: float = 300.0
    max_suspend_s: float = 600.0
    input_active_s: float = 60.0
    busy_load: float = 0.3
    busy_load_for_s: float = 60.0
    mode: PresenceMode = PresenceMode.SUSPEND
    #: ``coexist``: the least CPU the person's processes must leave idle for replicas to run.
    coexist_min_idle_cores: float = 0.5
    #: ``coexist``: below this much available memory replicas freeze and the newest goes.
    coexist_memory_floor_mib: float = 1024.0
    memory_evict_every_s: float = 1.0
    #: ``coexist``: how long every signal must be calm before frozen replicas thaw.
    thaw_after_s: float = 2.0
    #: ``coexist``: input without a gap of ``input_gap_s`` for this long freezes replicas.
    coexist_input_burst_s: float = 2.0
    input_gap_s: float = 0.25

    def __post_init__(self) -> None:
        for name in (
            "start_idle_s", "continue_idle_s", "max_suspend_s", "input_active_s",
            "busy_load", "busy_load_for_s", "coexist_min_idle_cores",
            "coexist_memory_floor_mib", "memory_evict_every_s", "thaw_after_s",
            "coexist_input_burst_s", "input_gap_s",
        ):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True, slots=True)
class Observation:
    """What the signal sources see at one moment."""

    at: float
    sessions: int = 0
    last_input_at: float | None = None
    foreign_load: float = 0.0
    timetable_block: bool = False
    #: Cores that the PC's processes other than replicas leave idle (None: not measured).
    idle_cores: float | None = None
    #: Memory available for new allocations, in MiB (None: not measured).
    memory_available_mib: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's verdict after an observation."""

    phase: Phase
    cause: PresenceCause
    since: float
    actions: tuple[Action, ...] = ()
    next_check_at: float | None = None
    #: Sharing, but frozen while the person's work needs the CPU or memory.
    frozen: bool = False

    @property
    def accepting(self) -> bool:
        """Whether replicas may run (and be started) on this PC."""
        return self.phase is Phase.AVAILABLE or (self.phase is Phase.SHARING and not self.frozen)

    @property
    def presence(self) -> PresenceState:
        """The presence state the heartbeat reports: idle when available, shared while
        replicas run beside a person, busy otherwise."""
        if not self.accepting:
            return PresenceState.BUSY
        return PresenceState.IDLE if self.phase is Phase.AVAILABLE else PresenceState.SHARED


class PresencePolicy:
    """Turns observations into phases and replica actions; see the module's header."""

    def __init__(self, settings: PolicySettings, now: float) -> None:
        self.settings = settings
        self._phase = Phase.WARMING if settings.start_idle_s > 0 else Phase.AVAILABLE
        self._since = now
        self._cause = PresenceCause.STARTING if settings.start_idle_s > 0 else PresenceCause.NONE
        self._paused_at: float | None = None
        self._seen_presence = False
        self._load_high_since: float | None = None
        self._frozen = False  # sharing, with every replica frozen
        self._calm_since: float | None = None  # sharing: since when no signal says freeze
        self._evicted_at: float | None = None  # sharing: the last stop for lack of memory
        self._input_since: float | None = None  # sharing: since when input came with no gap
        self._last = Observation(at=now)

    def observe(self, observation: Observation) -> Decision:
        """Take in what the sources see now; return the phase and what to do."""
        self._last = observation
        now = observation.at
        cause = self._active_cause(observation)
        actions: list[Action] = []
        if cause is not None:
            if self.settings.mode is PresenceMode.COEXIST and not observation.timetable_block:
                self._share(observation, actions)
            else:
                if self._phase is Phase.AVAILABLE or (
                    self._phase is Phase.SHARING and not self._frozen
                ):
                    actions.append(Action.PAUSE_ALL)
                    self._paused_at = now
                self._frozen = False
                if self._phase is not Phase.OCCUPIED:
                    self._enter(Phase.OCCUPIED, now)
            self._cause = cause
            self._seen_presence = True
        elif self._phase is Phase.OCCUPIED:
            self._quiet_since(now)
        elif self._phase is Phase.SHARING:  # the person left: the whole PC again, thawed
            if self._paused_at is not None:
                actions.append(Action.RESUME_ALL)
            self._paused_at, self._frozen = None, False
            self._enter(Phase.AVAILABLE, now, PresenceCause.NONE)
        if self._paused_at is not None and now - self._paused_at >= self.settings.max_suspend_s:
            actions.append(self._evict())
        if self._phase is Phase.COOLING and now - self._since >= self.settings.continue_idle_s:
            actions.append(Action.RESUME_ALL)
            self._paused_at = None
            self._enter(Phase.AVAILABLE, now, PresenceCause.NONE)
        elif self._phase is Phase.WARMING and now - self._since >= self._warming_s():
            self._enter(Phase.AVAILABLE, now, PresenceCause.NONE)
            self._seen_presence = False
        return self._decision(tuple(actions))

    def tick(self, now: float) -> Decision:
        """Time passed with nothing new observed (the agent calls this at ``next_check_at``)."""
        return self.observe(replace(self._last, at=now))

    def replacements_running(self, now: float) -> Decision:
        """The placement service says the paused replicas' replacements run: evict them."""
        evicted = (self._evict(),) if self._paused_at is not None else ()
        decision = self.tick(now)
        return replace(decision, actions=evicted + decision.actions)

    def _share(self, observation: Observation, actions: list[Action]) -> None:
        """A person is here and replicas may share the PC: freeze or thaw them as the fast
        signals say."""
        settings, now = self.settings, observation.at
        if self._phase is not Phase.SHARING:
            actions.append(Action.FIT_SHARE)
            self._frozen = self._paused_at is not None  # paused ones thaw once it is calm
            self._calm_since = None
            self._enter(Phase.SHARING, now)
        short_of_memory = (
            observation.memory_available_mib is not None
            and observation.memory_available_mib < settings.coexist_memory_floor_mib
        )
        short_of_cpu = (
            observation.idle_cores is not None
            and observation.idle_cores < settings.coexist_min_idle_cores
        )
        if (
            observation.last_input_at is None
            or now - observation.last_input_at >= settings.input_gap_s
        ):
            self._input_since = None
        elif self._input_since is None:
            self._input_since = observation.last_input_at
        burst = (
            self._input_since is not None
            and now - self._input_since >= settings.coexist_input_burst_s
        )
        if not (short_of_memory or short_of_cpu or burst):
            if self._calm_since is None:
                self._calm_since = now
            if self._frozen and now >= self._calm_since + settings.thaw_after_s:  # as next_check_at
                if self._paused_at is not None:
                    actions.append(Action.RESUME_ALL)
                self._paused_at, self._frozen = None, False
            return
        self._calm_since = None
        if not self._frozen:
            actions.append(Action.PAUSE_ALL)
            self._frozen, self._paused_at = True, now
        if short_of_memory and (
            self._evicted_at is None or now - self._evicted_at >= settings.memory_evict_every_s
        ):
            actions.append(Action.EVICT_NEWEST)
            self._evicted_at = now

    def _quiet_since(self, now: float) -> None:
        """The person left: paused replicas wait to resume, or new work waits to start."""
        if self._paused_at is not None:
            self._enter(Phase.COOLING, now)
        else:
            self._enter(Phase.WARMING, now, PresenceCause.STARTING)

    def _warming_s(self) -> float:
        """Quiet needed before new work: after a person, at least ``continue_idle_s`` too."""
        settings = self.settings
        if self._seen_presence:
            return max(settings.start_idle_s, settings.continue_idle_s)
        return settings.start_idle_s

    def _enter(self, phase: Phase, now: float, cause: PresenceCause | None = None) -> None:
        self._phase, self._since = phase, now
        if cause is not None:
            self._cause = cause

    def _evict(self) -> Action:
        self._paused_at = None
        if self._phase is Phase.COOLING:  # nothing left to resume: wait to start anew
            self._phase, self._cause = Phase.WARMING, PresenceCause.STARTING
        return Action.EVICT_PAUSED

    def _active_cause(self, observation: Observation) -> PresenceCause | None:
        settings = self.settings
        if observation.foreign_load > settings.busy_load:
            if self._load_high_since is None:
                self._load_high_since = observation.at
        else:
            self._load_high_since = None
        recent_input = (
            observation.last_input_at is not None
            and observation.at - observation.last_input_at < settings.input_active_s
        )
        sustained_load = (
            self._load_high_since is not None
            and observation.at - self._load_high_since >= settings.busy_load_for_s
        )
        for active, cause in (
            (observation.sessions > 0, PresenceCause.SESSION),
            (recent_input, PresenceCause.INPUT),
            (sustained_load, PresenceCause.LOAD),
            (observation.timetable_block, PresenceCause.TIMETABLE),
        ):
            if active:
                return cause
        return None

    def _decision(self, actions: tuple[Action, ...]) -> Decision:
        frozen = self._phase is Phase.SHARING and self._frozen
        return Decision(self._phase, self._cause, self._since, actions,
                        self._next_check_at(), frozen)  # fmt: skip

    def _next_check_at(self) -> float | None:
        """The earliest moment the verdict may change without any new observation."""
        settings, last = self.settings, self._last
        moments = []
        if self._phase is Phase.WARMING:
            moments.append(self._since + self._warming_s())
        if self._phase is Phase.COOLING:
            moments.append(self._since + settings.continue_idle_s)
        if self._paused_at is not None:
            moments.append(self._paused_at + settings.max_suspend_s)
        if self._phase is Phase.SHARING and self._frozen and self._calm_since is not None:
            moments.append(self._calm_since + settings.thaw_after_s)
        if self._phase is Phase.SHARING and not self._frozen and self._input_since is not None:
            burst_at = self._input_since + settings.coexist_input_burst_s
            if burst_at > last.at:
                moments.append(burst_at)
        if (
            last.last_input_at is not None
            and last.at - last.last_input_at < settings.input_active_s
        ):
            moments.append(last.last_input_at + settings.input_active_s)
        if self._load_high_since is not None:
            sustained_at = self._load_high_since + settings.busy_load_for_s
            if sustained_at > last.at:
                moments.append(sustained_at)
        return min(moments) if moments else None
