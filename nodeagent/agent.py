"""The agent on one PC: serves the person first, then runs the platform's replicas.

It feeds the presence signals into the pure :class:`~nodeagent.policy.PresencePolicy` and
carries out its decisions: on a login the replicas are paused *before* anyone is told, then
a heartbeat says what each paused one would lose if evicted (its worker's status file, read
once it is frozen) and ``NodePresence`` is published; they resume (or are evicted) as the
policy says. A start never outruns presence: the policy's verdict holds from the instant a
signal arrives, the runtime asks it once more just before a replica's process would begin, a
replica whose start finishes after a person arrived is paused at once, and the pause on
arrival waits for the starts in flight before the platform is told. It consumes its own
command queue (``node.<node>.commands``; several starts or stops may come in one
``StartReplicas`` or ``StopReplicas``, which its heartbeats say it takes), dropping
commands whose leader epoch is older than the newest it has seen, so a deposed leader
cannot undo its successor's work, and refusing one from further ahead than any leader's
could be (:mod:`nodeagent.epochs`). Each replica
gets the container contract in its environment (broker URL, namespace, app, and a token file
the agent rewrites on ``RenewToken``). Every ``heartbeat_s`` it publishes a
``NodeHeartbeat`` with capacity, allocatable resources, usage, replicas and presence (or,
when none of that but usage changed and the last whole one is under ``full_heartbeat_s``
old, a ``NodeAlive`` that says it still holds), and a
``ReplicaStatus`` with the exit code and last log lines of each replica that ended since. It
publishes only under its own ``node.<node>.…`` routing keys.

In ``coexist`` mode a person's arrival shares the PC instead (:mod:`nodeagent.share`): the
newest replicas over the reduced share are stopped, heartbeats offer only that share, and
the fast signals of :mod:`nodeagent.pressure`, read every 50 ms while a person is
there, freeze and thaw the rest as the policy says."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from bus import names
from bus.codec import Delivery
from bus.connection import Bus
from bus.consumer import Consumer
from bus.defaults import REPLICA_BROKER_URL
from bus.errors import InvalidMessage
from bus.service import supervised
from bus.topology import QueueSpec, declare_door
from bus.trust import PLATFORM, Principal
from nodeagent.epochs import EpochGuard, Verdict
from nodeagent.input import InputSource
from nodeagent.load import ForeignLoadSource
from nodeagent.loglimit import LogLimits
from nodeagent.logship import LogShipper
from nodeagent.policy import (
    Action,
    Decision,
    Observation,
    Phase,
    PolicySettings,
    PresencePolicy,
)
from nodeagent.pressure import PressureSource
from nodeagent.reports import heartbeat, metric_sample, what_it_says
from nodeagent.runtime import Runtime
from nodeagent.runtime.spec import ENDED, ReplicaInfo, ReplicaSpec, StartCancelled, StartFailed
from nodeagent.sessions import SessionSource
from nodeagent.share import newest, over_share, shared_allocatable
from nodeagent.status import StatusFolders
from nodeagent.timetable import Timetable
from nodeagent.tokens import TokenFiles
from schemas import (
    ZERO,
    Amount,
    NodeAlive,
    NodePresence,
    Owner,
    PauseReplica,
    Presence,
    Refusal,
    RenewToken,
    ReplicaCommand,
    ReplicaStart,
    ReplicaState,
    ReplicaStatus,
    ReplicaStop,
    ResumeReplica,
    StartReplica,
    StartReplicas,
    StopReplica,
    StopReplicas,
    utc_now,
)

__all__ = ["DESK_RESERVE", "Agent", "AgentSettings"]

#: What a PC keeps for the person at the desk unless told otherwise: a core and 2 GiB.
DESK_RESERVE = Amount(1000, 2048)

#: How long a person's arrival waits for starts in flight to pause before it is announced
#: (a start still pulling an image then pauses itself, or is cancelled, when it ends).
_STARTS_SETTLE_S = 2.0

log = logging.getLogger(__name__)

Command = ReplicaCommand | StartReplicas | StopReplicas
_COMMANDS: tuple[type[Command], ...] = (
    StartReplica,
    StartReplicas,
    StopReplicas,
    PauseReplica,
    ResumeReplica,
    StopReplica,
    RenewToken,
)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How a start ended, as its ReplicaStatus says it."""

    state: ReplicaState
    reason: str = ""
    refusal: Refusal | None = None


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    """One PC's agent: its name, what it offers, where it watches, and its policy."""

    node: str
    capacity: Amount
    utmp_path: Path
    #: What is kept for the person at the desk: replicas never reserve it.
    desk_reserve: Amount = DESK_RESERVE
    policy: PolicySettings = field(default_factory=PolicySettings)
    heartbeat_s: float = 1.0
    #: A whole heartbeat goes at least this often, and whenever what it says changed; in
    #: the beats between, a ``NodeAlive`` (a few dozen bytes) says it still holds.
    full_heartbeat_s: float = 5.0
    #: Seconds between metric samples (the PC's and each replica's use), for the metrics writer.
    metrics_s: float = 5.0
    labels: dict[str, str] = field(default_factory=dict)
    timetable: Timetable = field(default_factory=Timetable)
    load_sample_s: float = 5.0
    #: Whether foreign CPU load counts as a person (not on PCs simulated on one machine).
    foreign_load: bool = True
    platform_users: tuple[str, ...] = ()
    #: Where input devices are (``event*``); unreadable or missing: no input signal.
    input_dir: Path = Path("/dev/input")
    #: The broker URL replicas are given (no credentials: they use their token).
    replica_url: str = REPLICA_BROKER_URL
    #: How much of each replica's output is shipped to the platform, and kept here.
    log_limits: LogLimits = field(default_factory=LogLimits)
    #: The site data root (``--data-root``), told to the platform so users can find it.
    data_root: Path | None = None
    #: ``coexist`` mode: the share of the PC's cores and memory replicas keep beside a person.
    coexist_cpu_fraction: float = 0.5
    coexist_memory_fraction: float = 0.25
    #: ``coexist`` mode: how often the fast signals (CPU left idle, memory) are read.
    pressure_sample_s: float = 0.05

    @property
    def allocatable(self) -> Amount:
        """Capacity less the desk's reserve."""
        left = self.capacity - self.desk_reserve
        return Amount(max(0, left.cpu_millicores), max(0, left.memory_mib))

    def offered(self, decision: Decision) -> Amount:
        """What replicas may reserve under ``decision``: the reduced share while sharing.

        Raises:
            ValueError: a coexist fraction is not between 0 and 1.
        """
        if decision.phase is not Phase.SHARING:
            return self.allocatable
        cpu, memory = self.coexist_cpu_fraction, self.coexist_memory_fraction
        return shared_allocatable(self.capacity, self.allocatable, cpu, memory)


class Agent:
    """A PC's agent as a service on the bus; see the module's header."""

    name = "agent"

    def __init__(
        self,
        settings: AgentSettings,
        runtime: Runtime,
        tokens: TokenFiles,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        """``clock`` times the policy (monotonic seconds); ``wall_clock`` gives the local
        time the timetable is read at."""
        self.settings = settings
        self.runtime = runtime
        self.tokens = tokens
        self.status = StatusFolders(tokens.replica_dir)
        #: Per paused replica: the work it would lose if evicted (read as it was paused).
        self._unsaved: dict[str, float | None] = {}
        self._ended: set[str] = set()  # replicas whose end was reported
        #: Replicas the platform told it to stop, while they are stopped: their end is no
        #: crash (a killed one's exit code would otherwise count against its app).
        self._stopping: set[str] = set()
        self._clock = clock
        self._wall_clock = wall_clock
        self._policy = PresencePolicy(settings.policy, clock())
        self._sessions = SessionSource(settings.utmp_path, self._on_signal)
        self._input = InputSource(self._on_signal, folder=settings.input_dir, clock=clock)
        self._load = ForeignLoadSource(
            self._on_signal,
            sample_s=settings.load_sample_s,
            platform_users=settings.platform_users,
        )
        self._pressure = PressureSource(self._on_pressure, runtime.replica_cpu_ns,
                                        sample_s=settings.pressure_sample_s)  # fmt: skip
        #: When each replica started here (by the agent's clock): the newest go first.
        self._started_at: dict[str, float] = {}
        self._decision: Decision | None = None
        self._closing = False
        self._announced: Presence | None = None
        self._acting = asyncio.Lock()  # decisions are carried out one at a time, in order
        #: Starts in flight: their reservation, and a future done once each settled.
        self._starting: dict[str, tuple[Amount, asyncio.Future[None]]] = {}
        self._epochs = EpochGuard()
        self._seq = 0
        self._told: tuple[str, float] = ("", -float("inf"))  # the last heartbeat said, and when
        self._bus: Bus | None = None
        self._logs: LogShipper | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._commands = Consumer(
            QueueSpec.quorum(
                names.node_commands_queue(settings.node),
                (names.COMMANDS_EXCHANGE, names.node_command_keys(settings.node)),
            ),
            _COMMANDS,
            self._on_command,
            prefetch=20,
        )

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("the agent was not started")
        return self._bus

    @property
    def decision(self) -> Decision:
        """The policy's latest verdict."""
        assert self._decision is not None, "the agent was not started"
        return self._decision

    async def start(self, bus: Bus) -> None:
        """Watch presence, take commands, and start heartbeating.

        An agent that connects as the platform (a development site without keys) declares
        its PC's door itself; with a node key, the auth service did when it traded the key.
        """
        self._bus = bus
        self._logs = LogShipper(self.settings.node, self.runtime,
                                functools.partial(bus.publish, timeout_s=5.0),
                                self.settings.log_limits)  # fmt: skip
        if Principal.from_user_id(bus.user_name) == PLATFORM:
            channel = await bus.channel()
            await declare_door(channel, Owner.node(self.settings.node))
            await channel.close()
        self._sessions.start()
        self._input.start()
        if self.settings.foreign_load:
            self._load.start()
        await self._carry_out(self._decide())
        await self._commands.start(bus)
        self._spawn(supervised("heartbeats", self._heartbeats))
        self._spawn(supervised("metric samples", self._samples))

    async def stop(self, grace_s: float) -> None:
        """Stop watching and heartbeating; replicas keep running for the next agent to adopt."""
        self._closing = True  # a decision carried out meanwhile starts no fast sampling
        self._sessions.stop()
        self._input.stop()
        self._load.stop()
        self._pressure.stop()
        if self._timer is not None:
            self._timer.cancel()
        await self._commands.stop(grace_s)
        if self._logs is not None:
            await self._logs.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.runtime.close()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _observation(self) -> Observation:
        """What every signal source says now."""
        return Observation(
            at=self._clock(),
            sessions=len(self._sessions.sessions),
            last_input_at=self._input.last_input_at,
            foreign_load=self._load.cores,
            timetable_block=self.settings.timetable.blocked(self._wall_clock()),
            idle_cores=self._pressure.idle_cores,
            memory_available_mib=self._pressure.memory_available_mib,
        )

    def _on_signal(self, *_news: object) -> None:
        """A source changed (sessions, a load sample) or a timer fired: observe everything."""
        self._spawn(self._carry_out(self._decide()))

    def _on_pressure(self) -> None:
        """A fast sample (twenty a second): act only if the verdict changed."""
        before = self._decision
        if self._decide() != before:
            self._spawn(self._carry_out(self.decision))

    def _decide(self) -> Decision:
        """Observe every signal now; the verdict holds from this instant, for starts too."""
        self._decision = self._policy.observe(self._observation())
        return self._decision

    async def _carry_out(self, decision: Decision) -> None:
        """Pause first, tell afterwards; then resume or evict as decided. Decisions are
        carried out in the order they were made, so the last one told is the latest."""
        async with self._acting:
            replicas = await self.runtime.replicas()
            for index, action in enumerate(decision.actions):
                if index:  # the action before changed them
                    replicas = await self.runtime.replicas()
                if action is Action.PAUSE_ALL:
                    running = [r for r in replicas if r.state is ReplicaState.RUNNING]
                    await asyncio.gather(*(self._pause(r.replica_id) for r in running))
                    if settling := [done for _, done in self._starting.values()]:
                        await asyncio.wait(settling, timeout=_STARTS_SETTLE_S)
                    if running:  # what each holds unsaved, before placement moves them
                        await self._beat()
                elif action is Action.RESUME_ALL:
                    paused = [r for r in replicas if r.state is ReplicaState.PAUSED]
                    await asyncio.gather(*(self._resume(r.replica_id) for r in paused))
                elif action is Action.EVICT_PAUSED:
                    await self._evict(r.replica_id for r in replicas
                                      if r.state is ReplicaState.PAUSED)  # fmt: skip
                elif action is Action.FIT_SHARE:
                    share = self.settings.offered(decision)
                    await self._evict(over_share(replicas, self._started_at, share))
                else:  # EVICT_NEWEST
                    last = newest(replicas, self._started_at)
                    await self._evict([] if last is None else [last])
            if decision.phase is Phase.SHARING and not self._closing:  # only beside a person
                self._pressure.start()
            else:
                self._pressure.stop()
            # its own verdict: a newer one waits for the lock, and is told after its actions
            presence = self._presence(decision)
            if self._announced is None or self._announced.state is not presence.state:
                self._announced = presence
                await self.bus.publish(NodePresence(node=self.settings.node, presence=presence))
            self._schedule(decision.next_check_at)

    async def _evict(self, replica_ids: Iterable[str]) -> None:
        """Stop these replicas at once (SIGKILL): the platform replaces them elsewhere."""
        evicted = list(replica_ids)
        await asyncio.gather(*(self.runtime.stop(replica_id, 0) for replica_id in evicted))
        for replica_id in evicted:
            self._forget(replica_id)

    def _schedule(self, at: float | None) -> None:
        """Wake at the policy's next check, or when the timetable next flips if sooner."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now_wall = self._wall_clock()
        flips = self.settings.timetable.next_change(now_wall)
        if flips is not None:
            flips_at = self._clock() + (flips - now_wall).total_seconds()
            at = flips_at if at is None else min(at, flips_at)
        if at is not None:
            delay_s = max(0.0, at - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay_s, self._on_signal)

    def _presence(self, decision: Decision | None = None) -> Presence:
        """What ``decision`` (by default the latest) says of presence."""
        decision = decision or self.decision
        since = utc_now() - timedelta(seconds=max(0.0, self._clock() - decision.since))
        return Presence(state=decision.presence, cause=decision.cause, since=since)

    async def _on_command(self, command: Command, _delivery: Delivery) -> None:
        verdict = self._epochs.judge(command.epoch, self._clock())
        if verdict is Verdict.STALE:
            log.warning(
                "dropped %s from a deposed leader (epoch %d < %d)",
                command.schema_name,
                command.epoch,
                self._epochs.epoch,
            )
            return
        if verdict is Verdict.LEAP:  # dead-lettered with the reason; nothing changes
            raise InvalidMessage(
                f"epoch {command.epoch} is further ahead than any leader's could be "
                f"(obeying epoch {self._epochs.epoch})"
            )
        match command:
            case StartReplica():
                await self._start(command)
            case StartReplicas():  # as many starts, each as if it came alone
                await asyncio.gather(*(self._start(start) for start in command.starts))
            case PauseReplica():
                await self._pause(command.replica_id)
            case ResumeReplica():
                if self.decision.accepting:
                    await self._resume(command.replica_id)
            case StopReplica():
                await self._stop(command)
            case StopReplicas():  # as many stops, each as if it came alone
                await asyncio.gather(*(self._stop(stop) for stop in command.stops))
            case RenewToken():
                if self.tokens.folder(command.replica_id).is_dir():
                    self.tokens.write(command.replica_id, command.token)

    def _not_accepting(self) -> tuple[Refusal, str]:
        """This PC takes no replica now, and why, for people."""
        return Refusal.NOT_ACCEPTING, f"this PC is {self.decision.phase} ({self.decision.cause})"

    def _no_room(self, replicas: list[ReplicaInfo], wanted: Amount) -> tuple[Refusal, str] | None:
        """The replica's reservation does not fit what the live and starting ones leave."""
        held = [r.reservation for r in replicas if r.state not in ENDED]
        held += [reservation for reservation, _ in self._starting.values()]
        free = self.settings.offered(self.decision) - sum(held, ZERO)
        if wanted.shortfall(free) is None:
            return None
        return Refusal.NO_ROOM, (
            f"needs {wanted.cpu_millicores}m/{wanted.memory_mib}MiB, free "
            f"{free.cpu_millicores}m/{free.memory_mib}MiB"
        )

    async def _stop(self, command: ReplicaStop) -> None:
        self._stopping.add(command.replica_id)
        try:
            await self.runtime.stop(command.replica_id, command.grace_s)
        finally:
            self._stopping.discard(command.replica_id)
        self._forget(command.replica_id)
        self._ended.discard(command.replica_id)

    async def _start(self, command: ReplicaStart) -> None:
        replicas = await self.runtime.replicas()
        if command.replica_id in self._starting or any(
            r.replica_id == command.replica_id for r in replicas
        ):
            return  # idempotent: it runs, or starts, already
        wanted = Amount.of(command.reservation)
        refused = (
            self._no_room(replicas, wanted) if self.decision.accepting else self._not_accepting()
        )
        if refused is not None:
            outcome = _Outcome(ReplicaState.FAILED, refused[1], refused[0])
        else:
            settled = asyncio.get_running_loop().create_future()
            self._starting[command.replica_id] = (wanted, settled)
            try:
                outcome = await self._run(command)
            finally:
                del self._starting[command.replica_id]
                settled.set_result(None)
        await self._publish_status(command.replica_id, command.namespace, command.app, outcome)

    async def _run(self, command: ReplicaStart) -> _Outcome:
        """Start the replica; paused at once if a person arrived while it started."""
        env = {
            **command.env,
            "IDLECLOUD_URL": self.settings.replica_url,
            "IDLECLOUD_NAMESPACE": command.namespace,
            "IDLECLOUD_APP": command.app,
            "IDLECLOUD_REPLICA": command.replica_id,
            "IDLECLOUD_NODE": self.settings.node,
        }
        spec = ReplicaSpec(
            command.replica_id,
            command.namespace,
            command.app,
            command.image,
            command.command,
            env,
            Amount.of(command.reservation),
            # no token (a platform without the auth service): the URL's credentials serve
            self.tokens.write(command.replica_id, command.token) if command.token else None,
            self.status.folder(command.replica_id),
        )
        try:
            await self.runtime.start(spec, may_run=lambda: self.decision.accepting)
        except StartCancelled:
            self._forget(command.replica_id)
            refusal, reason = self._not_accepting()
            return _Outcome(ReplicaState.FAILED, reason, refusal)
        except StartFailed as error:
            self._forget(command.replica_id)
            return _Outcome(ReplicaState.FAILED, str(error))
        self._started_at[command.replica_id] = self._clock()
        if not self.decision.accepting:  # a person arrived while it started
            await self._pause(command.replica_id)
            refusal, reason = self._not_accepting()
            return _Outcome(ReplicaState.PAUSED, reason, refusal)
        return _Outcome(ReplicaState.RUNNING)

    async def _pause(self, replica_id: str) -> None:
        """Freeze the replica, then read what it would lose if evicted (final: it is frozen)."""
        await self.runtime.pause(replica_id)
        self._unsaved[replica_id] = self.status.unsaved_s(
            replica_id, self._wall_clock().timestamp()
        )

    async def _resume(self, replica_id: str) -> None:
        await self.runtime.resume(replica_id)
        self._unsaved.pop(replica_id, None)

    def _forget(self, replica_id: str) -> None:
        """Drop a replica's token, status folder and what it said."""
        self.tokens.remove(replica_id)
        self.status.remove(replica_id)
        self._unsaved.pop(replica_id, None)
        self._started_at.pop(replica_id, None)

    async def _publish_status(
        self,
        replica_id: str,
        namespace: str,
        app: str,
        outcome: _Outcome,
        ended: ReplicaInfo | None = None,
    ) -> None:
        await self.bus.publish(
            ReplicaStatus(
                node=self.settings.node,
                replica_id=replica_id,
                namespace=namespace,
                app=app,
                state=outcome.state,
                at=utc_now(),
                reason=outcome.reason,
                refusal=outcome.refusal,
                exit_code=None if ended is None else ended.exit_code,
                log_tail=() if ended is None else ended.log_tail,
            )
        )

    async def _report_endings(self, replicas: list[ReplicaInfo]) -> None:
        """One ReplicaStatus per replica that ended since the last heartbeat."""
        for replica in replicas:
            if replica.replica_id in self._stopping:
                continue  # told to stop: it goes from the next heartbeat, not as a crash
            if replica.state in ENDED and replica.replica_id not in self._ended:
                self._ended.add(replica.replica_id)
                outcome = _Outcome(replica.state, f"exited with code {replica.exit_code}")
                await self._publish_status(
                    replica.replica_id, replica.namespace, replica.app, outcome, ended=replica
                )

    async def _samples(self) -> None:
        psutil.cpu_percent()  # the first reading only sets the baseline
        cores = psutil.cpu_count() or 1
        present: set[str] = set()  # namespaces with replicas here at the last sample
        while True:
            await asyncio.sleep(self.settings.metrics_s)
            replicas = await self.runtime.replicas(with_usage=True)
            used = Amount(
                round(psutil.cpu_percent() / 100 * cores * 1000),
                psutil.virtual_memory().used // 2**20,
            )
            live = [r for r in replicas if r.state not in ENDED]
            settings = self.settings
            now_present = {r.namespace for r in live}
            sample = metric_sample(settings.node, used, settings.capacity, self._presence(),
                                   live, departed=present - now_present)  # fmt: skip
            await self.bus.publish(sample)
            present = now_present

    async def _heartbeats(self) -> None:
        while True:
            replicas = await self._beat()
            if self._logs is not None:  # after the heartbeat that tells the platform of them
                self._logs.sync(replicas)
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _beat(self) -> list[ReplicaInfo]:
        """One heartbeat: the PC, its presence, and every replica (with, paused, the work
        it would lose); the replicas it told of."""
        replicas = await self.runtime.replicas(with_usage=True)
        await self._report_endings(replicas)
        self._seq += 1
        settings = self.settings
        beat = heartbeat(
            settings.node, self._seq, settings.capacity, settings.offered(self.decision),
            self._presence(), replicas, settings.labels, self.runtime.name, self._unsaved,
            settings.data_root, settings.policy.mode,
        )  # fmt: skip
        says, now = what_it_says(beat), self._clock()
        # a sign of life goes out as soon as the connection is back (another broker node's),
        # not once its command consumer is too: that one can wait on its queue's election
        if says != self._told[0] or now - self._told[1] >= settings.full_heartbeat_s:
            await self.bus.publish(beat, before_restore=True)
            self._told = (says, now)
        else:
            alive = NodeAlive(node=beat.node, seq=beat.seq, sent_at=beat.sent_at)
            await self.bus.publish(alive, before_restore=True)
        return replicas
