"""Every exchange, queue and routing-key name on the bus, built by the ownership rule.

A name starts with its owner's prefix: ``ns.<namespace>.…`` for what belongs to a user's
namespace, ``node.<node>.…`` for what belongs to one PC, ``idlecloud.…`` for the
platform's own. Namespace, node and app names are DNS labels (no dots), so a name can never
reach into another owner's prefix. Because of that rule one scope pattern per owner lets the
broker authorize everything (see :mod:`bus.scopes`).

No owner writes to a shared exchange. Each owner's way in is its **door**: an exchange
named exactly its prefix (``ns.alice``, ``node.edge``, ``idlecloud.admin``), declared by
the platform, which the owner may write but not configure (its configure scope is
``<prefix>.*``), bound into the platform's exchange with the owner's prefix only
(``ns.alice.#``). Whatever route a message of Alice's takes (a carbon copy, a
dead-letter key, an alternate exchange), it starts at a door of hers.

Nothing else in the code base spells a name inline: it calls a function here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from schemas import (
    AppsQuery,
    AppsReply,
    BridgeStatus,
    CordonChanged,
    CordonRequest,
    DeleteRequest,
    DeploymentStatus,
    DeployRequest,
    JobCancel,
    JobDelete,
    JobEnded,
    JobForgotten,
    JobSeal,
    JobsQuery,
    JobsReply,
    JobSubmit,
    JournalMarker,
    JournalSnapshot,
    KeyIssued,
    KeyReply,
    KeysQuery,
    KeysReply,
    LeaderTookOver,
    LogBatch,
    Message,
    MetricSample,
    NodeAlive,
    NodeHeartbeat,
    NodePresence,
    NodesQuery,
    NodesReply,
    Owner,
    OwnerKind,
    PauseReplica,
    QuotaChanged,
    QuotaSet,
    RenewToken,
    ReplicaStatus,
    ReplicaTokenReply,
    ReplicaTokenRequest,
    RequestResult,
    ResumeReplica,
    ScaleRequest,
    StartReplica,
    StartReplicas,
    StopReplica,
    StopReplicas,
    TokenIssue,
    TokenRevoke,
    UsageQuery,
    UsageReply,
)

__all__ = [
    "ADMIN_DOOR",
    "ADMIN_PREFIX",
    "COMMANDS_EXCHANGE",
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_QUEUE",
    "DEFAULT_EXCHANGE",
    "DEFAULT_EXCHANGE_RESOURCE",
    "EVENTS_EXCHANGE",
    "JOURNAL_STREAM",
    "PLATFORM_EXCHANGES",
    "REQUESTS_EXCHANGE",
    "Route",
    "auth_request_keys",
    "checkpoint_key",
    "checkpoint_queue",
    "dead_letter_route",
    "dead_letter_target",
    "door",
    "door_binding",
    "door_target",
    "job_cancels_stream",
    "job_request_keys",
    "job_stream",
    "leader_queue",
    "log_batch_keys",
    "log_stream",
    "metrics_event_keys",
    "node_command_keys",
    "node_commands_queue",
    "node_dead_letter_keys",
    "node_event_keys",
    "node_view_keys",
    "ns_checkpoints_exchange",
    "ns_dead_exchange",
    "ns_events_binding",
    "ns_events_exchange",
    "ns_results_exchange",
    "ns_tasks_exchange",
    "ns_view_prefix",
    "owner_of",
    "presence_keys",
    "query_keys",
    "reply_queue",
    "request_keys",
    "result_queue",
    "route",
    "service_queue",
    "task_dead_queue",
    "task_queue",
    "usage_request_keys",
]

_PLATFORM = OwnerKind.PLATFORM.value

#: Facts that happened (heartbeats, presence, status): a topic exchange.
EVENTS_EXCHANGE = f"{_PLATFORM}.events"
#: Commands the platform addresses to one PC (only the platform writes here): a topic
#: exchange.
COMMANDS_EXCHANGE = f"{_PLATFORM}.commands"
#: Requests and questions for the control plane, from the namespaces' and admins' doors
#: (and the platform): a topic exchange.
REQUESTS_EXCHANGE = f"{_PLATFORM}.requests"
#: Where consumers republish what they cannot handle, routed by the source queue's name.
DEAD_LETTER_EXCHANGE = f"{_PLATFORM}.dead-letter"
#: Catch-all queue of the dead-letter exchange, bounded in length.
DEAD_LETTER_QUEUE = f"{_PLATFORM}.dead-letter"
#: The platform's topic exchanges, which only the platform's services write to.
PLATFORM_EXCHANGES = (EVENTS_EXCHANGE, COMMANDS_EXCHANGE, REQUESTS_EXCHANGE, DEAD_LETTER_EXCHANGE)
#: The journal: a RabbitMQ stream of every admitted change to the desired state.
JOURNAL_STREAM = f"{_PLATFORM}.journal"
#: Prefix of the admins' own names and of the admin request routing keys.
ADMIN_PREFIX = f"{_PLATFORM}.admin"
#: The admins' door: where their requests enter ``idlecloud.requests``.
ADMIN_DOOR = ADMIN_PREFIX
#: AMQP's default exchange, through which only the platform may publish.
DEFAULT_EXCHANGE = ""
#: The resource name the broker checks for a publish to the default exchange.
DEFAULT_EXCHANGE_RESOURCE = "amq.default"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a message is published: an exchange and a routing key."""

    exchange: str
    routing_key: str


def _ns_key(namespace: str, *parts: str) -> str:
    return ".".join(("ns", namespace, *parts))


def _node_key(node: str, *parts: str) -> str:
    return ".".join(("node", node, *parts))


def _admin_key(*parts: str) -> str:
    return ".".join((ADMIN_PREFIX, *parts))


def door(owner: Owner) -> str:
    """An owner's door: the one exchange through which it sends to the platform, named
    exactly its prefix (``ns.alice``, ``node.edge``; the admins': ``idlecloud.admin``)."""
    return ADMIN_DOOR if owner.kind is OwnerKind.PLATFORM else owner.prefix


def door_binding(owner: Owner) -> str:
    """The one binding key from an owner's door into the platform: its own prefix."""
    return f"{door(owner)}.#"


def door_target(owner: Owner) -> str:
    """The platform exchange an owner's door leads into: a PC's into the events (it reports
    facts), the others' into the requests. None leads into the commands to PCs."""
    return EVENTS_EXCHANGE if owner.kind is OwnerKind.NODE else REQUESTS_EXCHANGE


def service_queue(service: str, purpose: str) -> str:
    """A platform service's own queue, e.g. ``idlecloud.quota.requests``."""
    return f"{_PLATFORM}.{service}.{purpose}"


def leader_queue(service: str) -> str:
    """The exclusive queue whose owner is the service's leader."""
    return service_queue(service, "leader")


def reply_queue(owner: Owner, token: str) -> str:
    """An RPC requester's own reply queue: ``ns.alice.reply.<token>``; an admin's (and the
    platform's) is ``idlecloud.admin.reply.<token>``, a name an admin's scopes cover."""
    if owner.kind is OwnerKind.PLATFORM:
        return _admin_key("reply", token)
    return f"{owner.prefix}.reply.{token}"


def task_queue(namespace: str, app: str) -> str:
    """The quorum queue holding an application's tasks."""
    return _ns_key(namespace, "tasks", app)


def task_dead_queue(namespace: str, app: str) -> str:
    """Where an application's tasks go after their last failed attempt, with the error."""
    return _ns_key(namespace, "dead", app)


def ns_tasks_exchange(namespace: str) -> str:
    """The direct exchange clients submit tasks through (routing key: the app id)."""
    return _ns_key(namespace, "tasks")


def ns_dead_exchange(namespace: str) -> str:
    """The topic exchange of a namespace's failed tasks (routing key: the app id)."""
    return _ns_key(namespace, "dead")


def result_queue(namespace: str, client_id: str) -> str:
    """A client's own queue of task results, bound to the results exchange by its id."""
    return _ns_key(namespace, "results", client_id)


def job_stream(namespace: str, job_id: str) -> str:
    """The stream a job's results are kept in, ``idlecloud.ns.<ns>.job.<job id>``, bound to
    the namespace's results exchange with the job's id as key (its calls' ``reply_to``)."""
    return f"{ns_view_prefix(namespace)}.job.{job_id}"


def job_cancels_stream(namespace: str) -> str:
    """The stream of a namespace's cancelled job ids, which its workers read."""
    return f"{ns_view_prefix(namespace)}.cancels"


def log_stream(namespace: str) -> str:
    """The stream of a namespace's replicas' output lines, ``idlecloud.ns.<ns>.logs``."""
    return f"{ns_view_prefix(namespace)}.logs"


def ns_view_prefix(namespace: str) -> str:
    """What the platform keeps for a namespace to read is named under
    ``idlecloud.ns.<ns>``: the platform's own names, so the namespace may read them (its
    one scope there) but neither delete, re-declare, purge, bind nor write them."""
    return f"{_PLATFORM}.ns.{namespace}"


def ns_events_exchange(namespace: str) -> str:
    """A namespace's own view of ``idlecloud.events`` (bound with ``ns.<ns>.#``)."""
    return _ns_key(namespace, "events")


def ns_events_binding(namespace: str) -> str:
    """The binding from ``idlecloud.events`` that feeds a namespace's own view: ``ns.<ns>.#``."""
    return _ns_key(namespace, "#")


def ns_checkpoints_exchange(namespace: str) -> str:
    """The direct exchange through which a namespace's workers save checkpoints (routing
    key: :func:`checkpoint_key`)."""
    return _ns_key(namespace, "checkpoints")


def checkpoint_key(task_id: str) -> str:
    """A call's checkpoint key: a digest of its id (any id, any length, one name)."""
    return hashlib.sha256(task_id.encode()).hexdigest()[:32]


def checkpoint_queue(namespace: str, task_id: str) -> str:
    """The queue holding a call's last checkpoint: ``ns.<ns>.checkpoints.<key>``."""
    return _ns_key(namespace, "checkpoints", checkpoint_key(task_id))


def ns_results_exchange(namespace: str) -> str:
    """The exchange through which a namespace's task results travel to its clients."""
    return _ns_key(namespace, "results")


def node_commands_queue(node: str) -> str:
    """The queue a PC's agent consumes its commands from."""
    return _node_key(node, "commands")


def dead_letter_route(queue: str) -> Route | None:
    """Where the consumer of ``queue`` sends what it cannot handle (and where the broker
    sends what was delivered too often), on a route its owner may write to: the platform's
    queues to the dead-letter exchange keyed by the queue's name; a PC's through its door
    with its own ``node.<pc>.dead`` key, which the platform binds into the dead-letter
    exchange. None for a namespace's queues (they have dead queues of their own).
    """
    owner = owner_of(queue)
    if owner is not None and owner.kind is OwnerKind.NODE:
        return Route(door(owner), _node_key(owner.name, "dead"))
    if owner is not None and owner.kind is OwnerKind.PLATFORM:
        return Route(DEAD_LETTER_EXCHANGE, queue)
    return None


def dead_letter_target(queue: str) -> Route:
    """Where a consumer of ``queue`` republishes what it refuses: its owner's dead-letter
    route, else the dead-letter exchange keyed by the queue's name."""
    return dead_letter_route(queue) or Route(DEAD_LETTER_EXCHANGE, queue)


def node_dead_letter_keys() -> str:
    """The binding that carries every PC's dead letters into the dead-letter exchange."""
    return _node_key("*", "dead")


def node_command_keys(node: str) -> str:
    """The binding of a PC's command queue: every command addressed to that PC."""
    return _node_key(node, "#")


_NODE_VERBS: dict[type[Message], str] = {
    StartReplica: "start",
    StartReplicas: "starts",
    PauseReplica: "pause",
    ResumeReplica: "resume",
    StopReplica: "stop",
    StopReplicas: "stops",
    RenewToken: "renew",
}
_NODE_EVENTS: dict[type[Message], str] = {
    NodeHeartbeat: "heartbeat",
    NodePresence: "presence",
    NodeAlive: "alive",
    ReplicaStatus: "replica",
    MetricSample: "metrics",
    LogBatch: "logs",
}
_JOB_VERBS: dict[type[Message], str] = {
    JobSubmit: "submit",
    JobSeal: "seal",
    JobCancel: "cancel",
    JobDelete: "delete",
}
RequestVerb = Literal["deploy", "scale", "delete"]
_REQUEST_VERBS: dict[type[Message], RequestVerb] = {
    DeployRequest: "deploy",
    ScaleRequest: "scale",
    DeleteRequest: "delete",
}


def request_keys() -> tuple[str, ...]:
    """The routing-key patterns of every request the quota manager admits."""
    return (
        *(_ns_key("*", verb, "*") for verb in _REQUEST_VERBS.values()),
        _admin_key("quota", "*"),
        *(_admin_key(action, "*") for action in ("cordon", "uncordon", "drain")),
    )


def auth_request_keys() -> tuple[str, ...]:
    """The routing keys of the requests and questions the auth service answers."""
    return (
        _admin_key("token", "issue"),
        _admin_key("token", "revoke"),
        _admin_key("token", "replica"),
        _admin_key("query", "keys"),
    )


def job_request_keys() -> tuple[str, ...]:
    """The routing keys of the job requests and questions the jobs service answers."""
    return (_ns_key("*", "job", "*"), _ns_key("*", "query", "jobs"))


def log_batch_keys() -> str:
    """Every PC's batches of its replicas' output."""
    return _node_key("*", _NODE_EVENTS[LogBatch])


def usage_request_keys() -> tuple[str, ...]:
    """The routing keys of the usage questions: a namespace's, and the admins'."""
    return (_ns_key("*", "query", "usage"), _admin_key("query", "usage"))


def query_keys() -> tuple[str, ...]:
    """The routing-key patterns of every question the placement leader answers."""
    return (_ns_key("*", "query", "apps"), _admin_key("query", "nodes"))


def metrics_event_keys() -> tuple[str, ...]:
    """The routing-key patterns of every event the metrics writer keeps."""
    return (
        *(
            _node_key("*", _NODE_EVENTS[kind])
            for kind in (MetricSample, NodePresence, ReplicaStatus)
        ),
        _ns_key("*", "status", "*"),
        f"{_PLATFORM}.quota.*",
        f"{_PLATFORM}.cordon.*",
        f"{_PLATFORM}.kubebridge.status",
    )


def node_event_keys() -> tuple[str, ...]:
    """The routing-key patterns of every PC's heartbeats, presence and replica events."""
    return tuple(
        _node_key("*", _NODE_EVENTS[kind])
        for kind in (NodeHeartbeat, NodeAlive, NodePresence, ReplicaStatus)
    )


def presence_keys() -> tuple[str, ...]:
    """Every PC's heartbeats and presence changes: all that says whether a person is there."""
    return tuple(_node_key("*", _NODE_EVENTS[kind]) for kind in (NodeHeartbeat, NodePresence))


def node_view_keys() -> tuple[str, ...]:
    """The routing-key patterns of what anyone may watch of the PCs: presence and cordons."""
    return (_node_key("*", _NODE_EVENTS[NodePresence]), f"{_PLATFORM}.cordon.*")


def route(message: Message) -> Route:
    """The one exchange and routing key a message travels on.

    Consumers compare a delivery's exchange and routing key with this: a body that names
    another owner than its routing key does is refused.
    """
    kind = type(message)
    match message:
        case DeployRequest() | ScaleRequest() | DeleteRequest():
            key = _ns_key(message.namespace, _REQUEST_VERBS[kind], message.app)
            return Route(door(message.owner()), key)
        case JobSubmit() | JobSeal() | JobCancel() | JobDelete():
            return Route(door(message.owner()), _ns_key(message.namespace, "job", _JOB_VERBS[kind]))
        case JobsQuery():
            return Route(door(message.owner()), _ns_key(message.namespace, "query", "jobs"))
        case JobsReply():  # normally an RPC reply; as an event, a namespace's
            return Route(EVENTS_EXCHANGE, _ns_key(message.namespace, "jobs"))
        case (
            StartReplica()
            | StartReplicas()
            | PauseReplica()
            | ResumeReplica()
            | StopReplica()
            | StopReplicas()
            | RenewToken()
        ):
            return Route(COMMANDS_EXCHANGE, _node_key(message.node, _NODE_VERBS[kind]))
        case (
            NodeHeartbeat()
            | NodeAlive()
            | NodePresence()
            | ReplicaStatus()
            | MetricSample()
            | LogBatch()
        ):
            return Route(door(message.owner()), _node_key(message.node, _NODE_EVENTS[kind]))
        case QuotaSet():
            return Route(ADMIN_DOOR, _admin_key("quota", message.namespace))
        case CordonRequest():
            return Route(ADMIN_DOOR, _admin_key(message.action, message.node))
        case TokenIssue():
            return Route(ADMIN_DOOR, _admin_key("token", "issue"))
        case TokenRevoke():
            return Route(ADMIN_DOOR, _admin_key("token", "revoke"))
        case DeploymentStatus():
            return Route(EVENTS_EXCHANGE, _ns_key(message.namespace, "status", message.app))
        case RequestResult():
            return Route(EVENTS_EXCHANGE, f"{message.owner().prefix}.result")
        case QuotaChanged():
            return Route(EVENTS_EXCHANGE, f"{_PLATFORM}.quota.{message.namespace}")
        case CordonChanged():
            return Route(EVENTS_EXCHANGE, f"{_PLATFORM}.cordon.{message.node}")
        case BridgeStatus():
            return Route(EVENTS_EXCHANGE, f"{_PLATFORM}.kubebridge.status")
        case AppsQuery():
            return Route(door(message.owner()), _ns_key(message.namespace, "query", "apps"))
        case NodesQuery():
            return Route(ADMIN_DOOR, _admin_key("query", "nodes"))
        case AppsReply():  # normally an RPC reply; as an event, a namespace's overview
            return Route(EVENTS_EXCHANGE, _ns_key(message.namespace, "apps"))
        case NodesReply():
            return Route(EVENTS_EXCHANGE, f"{_PLATFORM}.nodes")
        case UsageQuery():
            owner = message.owner()
            key = (_admin_key("query", "usage") if owner.kind is OwnerKind.PLATFORM
                   else _ns_key(owner.name, "query", "usage"))  # fmt: skip
            return Route(door(owner), key)
        case UsageReply():  # normally an RPC reply; as an event, its owner's
            return Route(EVENTS_EXCHANGE, f"{message.owner().prefix}.usage")
        case KeysQuery():
            return Route(ADMIN_DOOR, _admin_key("query", "keys"))
        case ReplicaTokenRequest():
            return Route(REQUESTS_EXCHANGE, _admin_key("token", "replica"))
        case KeyReply() | KeysReply() | ReplicaTokenReply():  # RPC replies; as events, admin's
            return Route(EVENTS_EXCHANGE, _admin_key("keys"))
        case (
            LeaderTookOver()
            | JournalMarker()
            | JournalSnapshot()
            | KeyIssued()
            | JobEnded()
            | JobForgotten()
        ):
            return Route(DEFAULT_EXCHANGE, JOURNAL_STREAM)  # the control plane's own
    raise TypeError(f"no route is defined for {kind.__name__}")  # pragma: no cover


def owner_of(name: str) -> Owner | None:
    """The owner a queue, exchange or routing key belongs to, or None for a foreign name."""
    head, _, rest = name.partition(".")
    if head == _PLATFORM and rest:
        return Owner.platform()
    subject, dot, tail = rest.partition(".")
    if not (subject and dot and tail):
        return None
    if head == OwnerKind.NAMESPACE.value:
        return Owner.namespace(subject)
    if head == OwnerKind.NODE.value:
        return Owner.node(subject)
    return None
