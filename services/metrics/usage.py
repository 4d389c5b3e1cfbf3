"""Usage: the CPU each namespace reserved and used, from the replicas' samples (pure).

Theory of operation. Every metric sample carries, for each replica on the PC, its control
group's CPU counter (``cpu_s``: seconds used since the replica started) and the CPU it
reserves. So what a replica *used* in a window is the highest value its counter reached in
the window less its last value before the window (none: it started inside, and its
counter started at 0). The counter is cumulative, so a lost or late sample changes
nothing; only the CPU a replica used after its last sample is missed (at most one sample
period's worth: a few seconds of its life). What a replica *reserved* is its reservation
integrated over its samples in the window (InfluxQL ``integral()``: trapezoids between
consecutive samples, so up to one sample period is missed at each end of its life and, by
day, at each midnight). By day, each UTC day's highest value is the next day's baseline; a
counter that went down (a container restarted in place) starts again from 0.

InfluxDB 1.6 may answer the two aggregates of one replica in two series (one with the
counter, one with the integral, each with the other's column empty): a row adds whatever
it holds. Rows add the replicas up by namespace and app, PC or day. Per app or PC, a row
also says when its first and last samples in the window were taken and on which PCs its
replicas ran, so an app deleted long ago stays listed with what it ran and where (two
more queries: InfluxQL's ``first()`` and ``last()`` keep their point's time only
without ``GROUP BY time``, and a day's row spans its day anyway). The queries and the
arithmetic are here; :mod:`services.metrics.usage_server` runs them against InfluxDB.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from schemas import UsageBy, UsageQuery, UsageRow

__all__ = [
    "BASELINE_LOOKBACK",
    "Window",
    "baseline_query",
    "edge_query",
    "totals",
    "usage_rows",
    "window_query",
]

#: How far before a window the baseline of a replica's counter is looked for: agents
#: sample every few seconds, so a live replica has a sample well within it.
BASELINE_LOOKBACK = timedelta(days=1)
_REPLICA_TAGS = '"namespace", "app", "node", "replica"'
ReplicaKey = tuple[str, str, str, str]  # namespace, app, node, replica


@dataclass(frozen=True, slots=True)
class Window:
    """The moments a usage question covers, and whose replicas."""

    since: datetime
    until: datetime
    namespace: str | None
    by: UsageBy

    @classmethod
    def of(cls, query: UsageQuery, now: datetime) -> Window:
        """The window ``query`` asks about (until now, unless it says)."""
        return cls(query.since, query.until or now, query.namespace, query.by)


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000) * 1000


def _where(since: datetime, until: datetime, namespace: str | None) -> str:
    # a namespace is a DNS label (the schema checks): nothing in it needs quoting
    only = f" AND \"namespace\" = '{namespace}'" if namespace else ""
    return f"WHERE time >= {_ns(since)} AND time < {_ns(until)}{only}"


def window_query(window: Window) -> str:
    """Each replica's highest counter and its reservation's integral within the window
    (per UTC day when broken down by day)."""
    by_day = "time(1d), " if window.by == "day" else ""
    fill = " fill(none)" if window.by == "day" else ""
    return (
        'SELECT max("cpu_s") AS "used", integral("reserved_cpu_millicores", 1s) AS "reserved" '
        f'FROM "replica" {_where(window.since, window.until, window.namespace)} '
        f"GROUP BY {by_day}{_REPLICA_TAGS}{fill}"
    )


def baseline_query(window: Window) -> str:
    """Each replica's last counter before the window (within :data:`BASELINE_LOOKBACK`)."""
    where = _where(window.since - BASELINE_LOOKBACK, window.since, window.namespace)
    return f'SELECT last("cpu_s") AS "used" FROM "replica" {where} GROUP BY {_REPLICA_TAGS}'


def edge_query(window: Window, edge: Literal["first", "last"]) -> str:
    """The time of each replica's first (or last) sample within the window."""
    where = _where(window.since, window.until, window.namespace)
    return f'SELECT {edge}("cpu_s") AS "used" FROM "replica" {where} GROUP BY {_REPLICA_TAGS}'


@dataclass(slots=True)
class _Sum:
    reserved_cpu_s: float = 0.0
    used_cpu_s: float = 0.0
    replicas: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)
    first_at: datetime | None = None
    last_at: datetime | None = None

    def seen(self, first_at: datetime | None, last_at: datetime | None) -> None:
        if first_at is not None and (self.first_at is None or first_at < self.first_at):
            self.first_at = first_at
        if last_at is not None and (self.last_at is None or last_at > self.last_at):
            self.last_at = last_at


def _series(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The series of InfluxDB's JSON answer to one query.

    Raises:
        ValueError: InfluxDB refused the query.
    """
    results = answer.get("results") or [{}]
    if "error" in results[0]:
        raise ValueError(f"InfluxDB refused a usage query: {results[0]['error']}")
    series: list[dict[str, Any]] = results[0].get("series") or []
    return series


def _key(series: Mapping[str, Any]) -> ReplicaKey:
    tags = series.get("tags") or {}
    return (
        tags.get("namespace", ""),
        tags.get("app", ""),
        tags.get("node", ""),
        tags.get("replica", ""),
    )


def _baselines(answer: Mapping[str, Any]) -> dict[ReplicaKey, float]:
    found = {}
    for series in _series(answer):
        column = series["columns"].index("used")
        values = [row[column] for row in series["values"] if row[column] is not None]
        if values:
            found[_key(series)] = float(values[-1])
    return found


def _edges(answer: Mapping[str, Any] | None) -> dict[ReplicaKey, datetime]:
    """Each replica's time in an answer to :func:`edge_query`."""
    if answer is None:
        return {}
    found = {}
    for series in _series(answer):
        if series["values"]:  # one row: the replica's first (or last) sample
            at = series["columns"].index("time")
            found[_key(series)] = _moment(series["values"][0][at])
    return found


def _moment(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone(UTC)


def usage_rows(
    window_answer: Mapping[str, Any],
    baseline_answer: Mapping[str, Any],
    by: UsageBy,
    edges: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None,
) -> list[UsageRow]:
    """The window's rows (by day: in order of days; else biggest use first), from
    InfluxDB's answers to :func:`window_query` and :func:`baseline_query`, and per app or
    PC to :func:`edge_query`'s first and last (``edges``; none: the rows say no times).

    Raises:
        ValueError: InfluxDB refused a query.
    """
    baselines = _baselines(baseline_answer)
    firsts, lasts = (_edges(answer) for answer in edges or (None, None))
    sums: dict[tuple[str, str | datetime], _Sum] = {}
    for series in _series(window_answer):
        key = _key(series)
        namespace, app, node, replica = key
        columns = series["columns"]
        at, used, reserved = (columns.index(name) for name in ("time", "used", "reserved"))
        before = baselines.get(key, 0.0)
        for row in sorted(series["values"], key=lambda values: str(values[at])):
            highest, held = row[used], row[reserved]
            if highest is None and held is None:
                continue
            part = {"app": app, "pc": node}.get(by) or _moment(row[at])
            total = sums.setdefault((namespace, part), _Sum())
            total.replicas.add(replica)
            total.nodes.add(node)
            total.seen(firsts.get(key), lasts.get(key))
            total.reserved_cpu_s += float(held or 0.0) / 1000
            if highest is not None:
                total.used_cpu_s += highest - before if highest >= before else highest
                before = highest  # (a counter that went down restarted from 0)
    rows = [_row(namespace, part, by, total) for (namespace, part), total in sums.items()]
    if by == "day":
        return sorted(rows, key=lambda row: (str(row.day), row.namespace))
    return sorted(rows, key=lambda row: (-row.used_cpu_s, row.namespace, row.app or row.node))


def _row(namespace: str, part: str | datetime, by: UsageBy, total: _Sum) -> UsageRow:
    where: dict[str, Any] = {{"app": "app", "pc": "node"}.get(by, "day"): part}
    return UsageRow(
        namespace=namespace,
        **where,
        reserved_cpu_s=round(total.reserved_cpu_s, 3),
        used_cpu_s=round(total.used_cpu_s, 3),
        replicas=len(total.replicas),
        nodes=tuple(sorted(total.nodes)),
        first_at=total.first_at,
        last_at=total.last_at,
    )


def totals(rows: Iterable[UsageRow]) -> tuple[float, float]:
    """The CPU seconds reserved and used, over every row."""
    listed = list(rows)
    return (
        round(sum(row.reserved_cpu_s for row in listed), 3),
        round(sum(row.used_cpu_s for row in listed), 3),
    )
