"""The presence policy: when a PC may run the platform's replicas (pure: no I/O, no clock).

Theory of operation
-------------------
A PC belongs first to the person at its keyboard. The agent's signal sources (login
sessions from utmp, input activity, CPU load of processes that are not the platform's, a
weekly timetable of class hours) each report an observation; this policy turns the
stream of observations into one of four phases and the actions that go with them:

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

from schemas import PresenceCause, PresenceState

__all__ = ["Action", "Decision", "Observation", "Phase", "PolicySettings", "PresencePolicy"]


class Phase(StrEnum):
    """Where the PC is in the policy's cycle."""

    WARMING = "warming"
    AVAILABLE = "available"
    OCCUPIED = "occupied"
    COOLING = "cooling"


class Action(Enum):
    """What the agent must do to its replicas as a result of a decision."""

    PAUSE_ALL = "pause all replicas"
    RESUME_ALL = "resume the paused replicas"
    EVICT_PAUSED = "stop the paused replicas (SIGKILL)"


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The policy's thresholds (HTCondor's desktop policy, made faster)."""

    start_idle_s: float = 900.0
    continue_idle_s: float = 300.0
    max_suspend_s: float = 600.0
    input_active_s: float = 60.0
    busy_load: float = 0.3
    busy_load_for_s: float = 60.0

    def __post_init__(self) -> None:
        for name in (
            "start_idle_s", "continue_idle_s", "max_suspend_s", "input_active_s",
            "busy_load", "busy_load_for_s",
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


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's verdict after an observation."""

    phase: Phase
    cause: PresenceCause
    since: float
    actions: tuple[Action, ...] = ()
    next_check_at: float | None = None

    @property
    def accepting(self) -> bool:
        """Whether replicas may run (and be started) on this PC."""
        return self.phase is Phase.AVAILABLE

    @property
    def presence(self) -> PresenceState:
        """The presence state the heartbeat reports: idle only when available."""
        return PresenceState.IDLE if self.accepting else PresenceState.BUSY


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
        self._last = Observation(at=now)

    def observe(self, observation: Observation) -> Decision:
        """Take in what the sources see now; return the phase and what to do."""
        self._last = observation
        now = observation.at
        cause = self._active_cause(observation)
        actions: list[Action] = []
        if cause is not None:
            if self._phase is Phase.AVAILABLE:
                actions.append(Action.PAUSE_ALL)
                self._paused_at = now
            if self._phase is not Phase.OCCUPIED:
                self._enter(Phase.OCCUPIED, now)
            self._cause = cause
            self._seen_presence = True
        elif self._phase is Phase.OCCUPIED:
            self._quiet_since(now)
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
        return Decision(self._phase, self._cause, self._since, actions, self._next_check_at())

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
