"""InfluxDB line protocol, built in one place for InfluxDB 1.x and 2.x alike (pure).

Every bus event the metrics writer keeps becomes one or more points:

========================  ============================  ==================================
event                     measurement                   tags; fields
========================  ============================  ==================================
``MetricSample``          ``node``                      node, presence; cpu/memory used,
                                                        capacity, reserved, replicas
``MetricSample``          ``replica`` (one per replica) node, namespace, app, replica;
                                                        cpu_millicores, memory_mib,
                                                        cpu_s (since it started),
                                                        reserved_cpu_millicores
``MetricSample``          ``namespace_usage`` (one per  node, namespace; replicas,
                          namespace on the PC)          cpu_millicores, memory_mib
``NodePresence``          ``presence``                  node, state, cause; busy (0/1)
``ReplicaStatus``         ``replica_event``             node, namespace, app, state;
                                                        replica, exit_code, reason
``DeploymentStatus``      ``deployment``                namespace, app, state; desired,
                                                        running, reason
``QuotaChanged``          ``quota``                     namespace; cpu_millicores,
                                                        memory_mib
``CordonChanged``         ``cordon``                    node, action; cordoned (0/1),
                                                        reason
``BridgeStatus``          ``kubebridge``                -; api_reachable (0/1),
                                                        nodes_mapped, cordoned, evicted,
                                                        refused, pending, last_error
========================  ============================  ==================================

Timestamps are the event's own (nanoseconds), so a point written late lands where it
happened.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from schemas import (
    BridgeStatus,
    CordonChanged,
    DeploymentStatus,
    Message,
    MetricSample,
    NodePresence,
    PresenceState,
    QuotaChanged,
    ReplicaStatus,
)

__all__ = ["escape_tag", "line", "points"]

Field = int | float | str | bool


_TAG_ESCAPES = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def escape_tag(value: str) -> str:
    """A measurement, tag key, tag value or field key with its special characters escaped."""
    return value.translate(_TAG_ESCAPES)


def _field(value: Field) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    return f'"{value.translate(_STRING_ESCAPES)}"'


def line(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, Field], at: datetime
) -> str:
    """One point in line protocol (tags sorted, as InfluxDB prefers)."""
    tag_text = "".join(f",{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tags.items()) if v)
    field_text = ",".join(f"{escape_tag(k)}={_field(v)}" for k, v in fields.items())
    nanoseconds = int(at.timestamp() * 1_000_000) * 1000
    return f"{escape_tag(measurement)}{tag_text} {field_text} {nanoseconds}"


def points(event: Message) -> list[str]:
    """The points one event becomes (none for events the writer does not keep)."""
    match event:
        case MetricSample():
            node = [line("node", {"node": event.node, "presence": event.presence.value}, {
                "cpu_millicores": event.cpu_millicores, "memory_mib": event.memory_mib,
                "capacity_cpu_millicores": event.capacity.cpu_millicores,
                "capacity_memory_mib": event.capacity.memory_mib,
                "reserved_cpu_millicores": event.reserved.cpu_millicores,
                "reserved_memory_mib": event.reserved.memory_mib,
                "replicas": len(event.replicas),
                "busy": int(event.presence is PresenceState.BUSY),
            }, event.at)]  # fmt: skip
            per_namespace: dict[str, list[int]] = {}
            for r in event.replicas:
                totals = per_namespace.setdefault(r.namespace, [0, 0, 0])
                totals[0] += 1
                totals[1] += r.cpu_millicores
                totals[2] += r.memory_mib
            replicas = [
                line("replica", {"node": event.node, "namespace": r.namespace, "app": r.app,
                                 "replica": r.replica_id},
                     {"cpu_millicores": r.cpu_millicores, "memory_mib": r.memory_mib,
                      "cpu_s": float(r.cpu_s),
                      "reserved_cpu_millicores": r.reserved_cpu_millicores}, event.at)
                for r in event.replicas
            ]  # fmt: skip
            for namespace in event.departed:  # gone from this PC: zero from now on
                per_namespace.setdefault(namespace, [0, 0, 0])
            namespaces = [
                line("namespace_usage", {"node": event.node, "namespace": namespace},
                     {"replicas": n, "cpu_millicores": cpu, "memory_mib": memory}, event.at)
                for namespace, (n, cpu, memory) in sorted(per_namespace.items())
            ]  # fmt: skip
            return node + replicas + namespaces
        case NodePresence():
            presence = event.presence
            tags = {
                "node": event.node,
                "state": presence.state.value,
                "cause": presence.cause.value,
            }
            return [line("presence", tags, {"busy": int(presence.state is PresenceState.BUSY)},
                         presence.since)]  # fmt: skip
        case ReplicaStatus():
            tags = {"node": event.node, "namespace": event.namespace, "app": event.app,
                    "state": event.state.value}  # fmt: skip
            fields: dict[str, Field] = {"replica": event.replica_id, "reason": event.reason}
            if event.exit_code is not None:
                fields["exit_code"] = event.exit_code
            return [line("replica_event", tags, fields, event.at)]
        case DeploymentStatus():
            tags = {"namespace": event.namespace, "app": event.app, "state": event.state.value}
            return [line("deployment", tags, {"desired": event.desired, "running": event.running,
                                             "reason": event.reason}, event.at)]  # fmt: skip
        case QuotaChanged():
            quota = event.quota
            return [line("quota", {"namespace": event.namespace},
                         {"cpu_millicores": quota.cpu_millicores,
                          "memory_mib": quota.memory_mib}, event.at)]  # fmt: skip
        case CordonChanged():
            return [line("cordon", {"node": event.node, "action": event.action},
                         {"cordoned": int(event.action != "uncordon"), "reason": event.reason},
                         event.at)]  # fmt: skip
        case BridgeStatus():
            return [line("kubebridge", {}, {
                "api_reachable": int(event.api_reachable), "nodes_mapped": event.nodes_mapped,
                "cordoned": len(event.cordoned), "evicted": event.evicted_total,
                "refused": event.refused_total, "pending": event.pending_evictions,
                "last_error": event.last_error,
            }, event.at)]  # fmt: skip
    return []
