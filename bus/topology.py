"""The platform's exchanges and queues, declared in one place.

:func:`declare_platform` declares what every component relies on: the platform's
exchanges (events, requests, commands to PCs, dead letters), the admins' door, the
dead-letter catch-all queue, and the journal stream; :func:`declare_namespace` and
:func:`declare_door` give an owner its door.
Components declare their own queues from a :class:`QueueSpec`. Declarations are
idempotent, and a robust channel repeats them after a reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiormq
from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractQueue

from bus import names
from bus.errors import BrokerUnavailable
from schemas import Owner

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from bus.connection import Bus

__all__ = [
    "CANCELS_MAX_BYTES",
    "DEAD_LETTER_MAX_LENGTH",
    "DELIVERY_LIMIT",
    "JOURNAL",
    "JOURNAL_MAX_BYTES",
    "LOG_STREAM_MAX_AGE",
    "LOG_STREAM_MAX_BYTES",
    "STREAM_READY_S",
    "TASK_DELIVERY_LIMIT",
    "QueueSpec",
    "cancels_spec",
    "declare_app",
    "declare_door",
    "declare_namespace",
    "declare_platform",
    "declare_stream",
    "job_stream_spec",
    "log_stream_spec",
    "queue_exists",
    "task_queue_spec",
]

#: The catch-all dead-letter queue keeps the newest this many messages.
DEAD_LETTER_MAX_LENGTH = 100_000
#: The journal keeps at most this many bytes (old segments are dropped past it).
JOURNAL_MAX_BYTES = 1024**3
#: A task delivered this many times without an ack (its workers keep dying on it) is
#: dead-lettered by the broker.
TASK_DELIVERY_LIMIT = 10
#: A platform or PC queue's message returned this many times (its consumer kept failing
#: to settle it) is dead-lettered by the broker: no message can wedge a consumer.
DELIVERY_LIMIT = 5


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue and the bindings that feed it."""

    name: str
    bindings: tuple[tuple[str, str], ...] = ()
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quorum(cls, name: str, *bindings: tuple[str, str], **arguments: Any) -> QueueSpec:
        """A durable, replicated quorum queue. The platform's and a PC's own have a delivery
        limit and dead-letter to :func:`bus.names.dead_letter_route` (which their owner may
        write: the broker checks that when the queue is declared)."""
        defaults: dict[str, Any] = {"x-queue-type": "quorum"}
        if (dead := names.dead_letter_route(name)) is not None:
            defaults |= {
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-exchange": dead.exchange,
                "x-dead-letter-routing-key": dead.routing_key,
            }
        return cls(name, bindings, arguments={**defaults, **arguments})

    @classmethod
    def private(cls, name: str, *bindings: tuple[str, str]) -> QueueSpec:
        """A queue owned by this connection alone, gone when it closes."""
        return cls(name, bindings, durable=False, exclusive=True, auto_delete=True)

    async def declare(self, channel: AbstractChannel, *, passive: bool = False) -> AbstractQueue:
        """Declare the queue and its bindings on ``channel``.

        ``passive`` only checks that the queue exists (someone else declared it): what a
        credential that may read a queue but not configure it can do.
        """
        queue = await channel.declare_queue(
            self.name,
            durable=self.durable,
            exclusive=self.exclusive,
            auto_delete=self.auto_delete,
            arguments=self.arguments or None,
            passive=passive,
        )
        if not passive:
            for exchange, routing_key in self.bindings:
                await queue.bind(exchange, routing_key)
        return queue


#: A call's checkpoint queue nobody has used for this long is deleted by the broker (its
#: call will not run again: its job was abandoned, or its worker died after answering).
CHECKPOINT_EXPIRES_S = 7 * 86_400


def checkpoint_spec(namespace: str, task_id: str) -> QueueSpec:
    """The queue of a call's checkpoint: a quorum queue (replicated on a cluster) holding only
    the newest (one message, the older dropped from the head), bound to the namespace's
    checkpoints exchange by the call's key, and expiring once unused
    (:data:`CHECKPOINT_EXPIRES_S`)."""
    return QueueSpec(
        names.checkpoint_queue(namespace, task_id),
        ((names.ns_checkpoints_exchange(namespace), names.checkpoint_key(task_id)),),
        arguments={
            "x-queue-type": "quorum",
            "x-max-length": 1,
            "x-overflow": "drop-head",
            "x-expires": CHECKPOINT_EXPIRES_S * 1000,
        },
    )


#: The journal stream (see bus.journal). Retention drops whole segments (RabbitMQ's
#: default: 500 MB), so at least 512 MiB stay after a drop: more than the entries since
#: the newest snapshot can take (``services.state.SNAPSHOT_EVERY`` entries of at most
#: 1 MiB, plus the snapshot itself, at most ``bus.journal.MAX_ENTRY_BYTES``). Retention
#: therefore only ever drops what a snapshot holds. An existing journal keeps the limits
#: it was declared with (readers declare it passively).
JOURNAL = QueueSpec(
    names.JOURNAL_STREAM,
    arguments={"x-queue-type": "stream", "x-max-length-bytes": JOURNAL_MAX_BYTES},
)


async def declare_platform(
    bus: Bus, *, recovery_s: float = 60.0, journal: QueueSpec = JOURNAL
) -> None:
    """Declare the exchanges, dead-letter queue and journal every component relies on.

    After an unclean stop the broker accepts connections before its durable streams and
    quorum queues are back ("home node ... is down or inaccessible"); such a declaration
    is retried on a fresh channel for up to ``recovery_s``.

    Raises:
        BrokerUnavailable: a queue stayed unusable for ``recovery_s``.
    """
    deadline = time.monotonic() + recovery_s
    while True:
        channel = await bus.channel()
        try:
            await _declare_platform(bus, channel, journal)
        except aiormq.exceptions.ChannelNotFoundEntity as error:
            if "down or inaccessible" not in str(error) or time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"the platform's queues are not usable: {error}. "
                    "Check the broker's log in /var/log/rabbitmq/"
                ) from None
            await asyncio.sleep(1.0)
            continue
        await channel.close()
        return


async def _declare_platform(bus: Bus, channel: AbstractChannel, journal: QueueSpec) -> None:
    for exchange in names.PLATFORM_EXCHANGES:
        await channel.declare_exchange(exchange, ExchangeType.TOPIC, durable=True)
    await declare_door(channel, Owner.platform())
    dead_exchange = await channel.get_exchange(names.DEAD_LETTER_EXCHANGE)
    await dead_exchange.bind(names.EVENTS_EXCHANGE, names.node_dead_letter_keys())
    dead_letters = QueueSpec(
        names.DEAD_LETTER_QUEUE,
        ((names.DEAD_LETTER_EXCHANGE, "#"),),
        arguments={
            "x-queue-type": "quorum",
            "x-max-length": DEAD_LETTER_MAX_LENGTH,
            "x-overflow": "drop-head",
        },
    )
    for spec in (dead_letters, journal):
        await _declare_or_keep(bus, spec)


async def _declare_or_keep(bus: Bus, spec: QueueSpec) -> None:
    """Declare ``spec`` on a channel of its own (the broker closes the channel of a refused
    declaration); one declared earlier with other arguments (another type, other limits:
    the broker does not change them) is kept as it is."""
    channel = await bus.channel()
    try:
        await spec.declare(channel)
    except aiormq.exceptions.ChannelPreconditionFailed as error:
        log.warning("%s keeps the arguments it was declared with (%s)", spec.name, error)
    finally:
        if not channel.is_closed:
            await channel.close()


async def declare_door(channel: AbstractChannel, owner: Owner) -> None:
    """Declare an owner's door (:func:`bus.names.door`) and bind it into the platform with
    the owner's own prefix. Only the platform may: owners may not configure their door."""
    door = await channel.declare_exchange(names.door(owner), ExchangeType.TOPIC, durable=True)
    target = await channel.get_exchange(names.door_target(owner), ensure=False)
    await target.bind(door, names.door_binding(owner))


async def declare_namespace(channel: AbstractChannel, namespace: str) -> None:
    """Give a namespace its door, its stream of cancelled jobs, and its own view of the
    platform's events: ``ns.<ns>.events``, bound to ``idlecloud.events`` with
    ``ns.<ns>.#``. Its users may bind their queues to the view, never to
    ``idlecloud.events`` itself."""
    await declare_door(channel, Owner.namespace(namespace))
    await cancels_spec(namespace).declare(channel)
    own = await channel.declare_exchange(
        names.ns_events_exchange(namespace), ExchangeType.TOPIC, durable=True
    )
    await own.bind(names.EVENTS_EXCHANGE, names.ns_events_binding(namespace))


#: A namespace's stream of cancelled job ids keeps about this many bytes (a cancellation
#: is ~60 bytes on disk: 70,000 of them); older segments are dropped past it.
CANCELS_MAX_BYTES = 4 * 1024**2


def cancels_spec(namespace: str) -> QueueSpec:
    """A namespace's stream of cancelled job ids (one id per message), which its workers
    read from the start so that no call of a cancelled job starts."""
    return QueueSpec(
        names.job_cancels_stream(namespace),
        arguments={
            "x-queue-type": "stream",
            "x-max-length-bytes": CANCELS_MAX_BYTES,
            "x-stream-max-segment-size-bytes": CANCELS_MAX_BYTES // 4,
        },
    )


#: A namespace's log stream keeps at most this many bytes and this long: whole segments
#: (a quarter of it each) are dropped past either.
LOG_STREAM_MAX_BYTES = 256 * 1024**2
LOG_STREAM_MAX_AGE = "7D"


#: RabbitMQ 3.10 answers a stream's declaration before the stream can take a message: one
#: routed to it in the next few milliseconds crashes the publishing channel
#: (``osiris_writer:write(none, …)``, a ``function_clause``), and with it the whole
#: connection (541 INTERNAL_ERROR). A new stream is given this long before use.
STREAM_READY_S = 0.5


async def queue_exists(bus: Bus, spec: QueueSpec) -> bool:
    """Whether the queue (or stream) exists, asked on a channel of its own: the broker
    closes the channel of a passive declare that finds nothing."""
    channel = await bus.channel()
    try:
        await spec.declare(channel, passive=True)
        return True
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()


async def declare_stream(bus: Bus, spec: QueueSpec) -> bool:
    """Declare a stream unless it exists; a new one is given :data:`STREAM_READY_S` before
    this returns. True if it was new."""
    if await queue_exists(bus, spec):
        return False
    channel = await bus.channel()
    await spec.declare(channel)
    await channel.close()
    await asyncio.sleep(STREAM_READY_S)
    return True


def log_stream_spec(namespace: str) -> QueueSpec:
    """A namespace's replicas' output: a stream the platform writes, bounded in size and age,
    which the namespace (and admins) may read."""
    return QueueSpec(
        names.log_stream(namespace),
        arguments={
            "x-queue-type": "stream",
            "x-max-length-bytes": LOG_STREAM_MAX_BYTES,
            "x-max-age": LOG_STREAM_MAX_AGE,
            "x-stream-max-segment-size-bytes": LOG_STREAM_MAX_BYTES // 4,
        },
    )


def job_stream_spec(namespace: str, job_id: str) -> QueueSpec:
    """A job's results: a stream fed by ``ns.<ns>.results`` with the job's id as key.

    A stream, because a job's results must be read whole by any number of readers, any
    number of times, and outlive every client; it is replicated like a quorum queue.
    """
    return QueueSpec(
        names.job_stream(namespace, job_id),
        ((names.ns_results_exchange(namespace), job_id),),
        arguments={"x-queue-type": "stream"},
    )


def task_queue_spec(namespace: str, app: str) -> QueueSpec:
    """An app's task queue: a quorum queue fed by ``ns.<ns>.tasks`` with the app id as key.

    Declared identically by workers, clients and the platform (quorum queue arguments must
    match on every declaration).
    """
    return QueueSpec.quorum(
        names.task_queue(namespace, app),
        (names.ns_tasks_exchange(namespace), app),
        **{
            "x-delivery-limit": TASK_DELIVERY_LIMIT,
            "x-dead-letter-exchange": names.ns_dead_exchange(namespace),
            "x-dead-letter-routing-key": app,
        },
    )


async def declare_app(channel: AbstractChannel, namespace: str, app: str) -> QueueSpec:
    """Declare an app's exchanges (its namespace's tasks, results, checkpoints and dead
    tasks), task queue and dead-task queue; return the task queue."""
    await channel.declare_exchange(names.ns_tasks_exchange(namespace), durable=True)
    await channel.declare_exchange(names.ns_results_exchange(namespace), durable=True)
    await channel.declare_exchange(names.ns_checkpoints_exchange(namespace), durable=True)
    await channel.declare_exchange(
        names.ns_dead_exchange(namespace), ExchangeType.TOPIC, durable=True
    )
    dead = QueueSpec.quorum(
        names.task_dead_queue(namespace, app), (names.ns_dead_exchange(namespace), app)
    )
    await dead.declare(channel)
    tasks = task_queue_spec(namespace, app)
    await tasks.declare(channel)
    return tasks
