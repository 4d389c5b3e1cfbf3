"""The lab's figures, defined once: Grafana's dashboard and `bus report` both come from here.

Each panel is a title, a unit and InfluxQL queries written for Grafana (``$timeFilter``
and ``$__interval`` are its macros; :func:`concrete` substitutes them for everyone else).
``python -m services.metrics.panels`` prints the dashboard JSON that
``compose/grafana/dashboards/idlecloud.json`` holds (a test keeps the two equal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["ANNOTATION", "PANELS", "Panel", "Query", "concrete", "dashboard"]


@dataclass(frozen=True, slots=True)
class Query:
    """One InfluxQL query of a panel and how its series are named (Grafana's alias)."""

    text: str
    alias: str


@dataclass(frozen=True, slots=True)
class Panel:
    """One figure: what it shows, in which unit, from which queries."""

    title: str
    unit: str
    description: str
    queries: tuple[Query, ...]


def _sum_of_last(field: str, measurement: str, by: str = "") -> str:
    """The sum over PCs of each PC's last value of ``field`` in each interval."""
    inner_by = f', "{by}"' if by else ""
    outer_by = f', "{by}"' if by else ""
    return (
        f'SELECT sum("v") FROM (SELECT last("{field}") AS "v" FROM "{measurement}" WHERE '
        f'$timeFilter GROUP BY time($__interval), "node"{inner_by}) WHERE $timeFilter '
        f"GROUP BY time($__interval){outer_by}"
    )


PANELS: tuple[Panel, ...] = (
    Panel("CPU used by each app per PC", "millicores",
          "The thesis's Figures 31-34: each app's CPU on each PC.",
          (Query('SELECT mean("cpu_millicores") FROM "replica" WHERE $timeFilter '
                 'GROUP BY time($__interval), "node", "app" fill(null)',
                 "$tag_app on $tag_node"),)),
    Panel("Replicas per PC, by user", "replicas",
          "How many replicas of each namespace ran on each PC over time.",
          (Query('SELECT last("replicas") FROM "namespace_usage" WHERE $timeFilter '
                 'GROUP BY time($__interval), "node", "namespace" fill(previous)',
                 "$tag_namespace on $tag_node"),)),
    Panel("Reserved CPU over capacity, per PC", "percentunit",
          "The share of each PC's CPU reserved by replicas.",
          (Query('SELECT last("reserved_cpu_millicores") / last("capacity_cpu_millicores") '
                 'FROM "node" WHERE $timeFilter GROUP BY time($__interval), "node" '
                 "fill(previous)", "$tag_node"),)),
    Panel("Each namespace's CPU in use against its quota", "millicores",
          "Each namespace's CPU across all PCs, and its quota when it was set.",
          (Query(_sum_of_last("cpu_millicores", "namespace_usage", "namespace"),
                 "$tag_namespace in use"),
           Query('SELECT last("cpu_millicores") FROM "quota" WHERE $timeFilter '
                 'GROUP BY time($__interval), "namespace" fill(previous)',
                 "$tag_namespace quota"))),
    Panel("Cluster CPU: capacity against reserved", "millicores",
          "The thesis's Figure 41: what the lab offers and what is used.",
          (Query(_sum_of_last("capacity_cpu_millicores", "node"), "capacity"),
           Query(_sum_of_last("reserved_cpu_millicores", "node"), "reserved"))),
)  # fmt: skip

#: Presence periods, shown as annotations (Grafana) or shaded marks (`bus report`).
ANNOTATION = 'SELECT "busy", "cause" FROM "presence" WHERE "busy" = 1 AND $timeFilter'


def concrete(query: str, since_s: float, interval_s: float) -> str:
    """``query`` with Grafana's macros replaced: the last ``since_s`` seconds in steps."""
    return query.replace("$timeFilter", f"time > now() - {int(since_s)}s").replace(
        "$__interval", f"{max(1, int(interval_s))}s"
    )


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard of :data:`PANELS`, for the provisioned InfluxQL data source."""
    source = {"type": "influxdb", "uid": "idlecloud-influxdb"}
    panels = []
    for index, panel in enumerate(PANELS):
        wide = len(PANELS) % 2 == 1 and index == len(PANELS) - 1
        panels.append({
            "id": index + 1, "type": "timeseries", "title": panel.title,
            "description": panel.description, "datasource": source,
            "gridPos": {"x": 0 if wide else 12 * (index % 2), "y": 8 * (index // 2),
                        "w": 24 if wide else 12, "h": 8},
            "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
            "targets": [{"datasource": source, "refId": chr(65 + n), "rawQuery": True,
                         "resultFormat": "time_series", "query": q.text, "alias": q.alias}
                        for n, q in enumerate(panel.queries)],
        })  # fmt: skip
    return {
        "uid": "idlecloud-lab", "title": "idlecloud: the lab", "schemaVersion": 38,
        "version": 1, "time": {"from": "now-30m", "to": "now"}, "refresh": "10s",
        "tags": ["idlecloud"], "panels": panels,
        "annotations": {"list": [{
            "name": "A person at a PC", "datasource": source, "enable": True,
            "iconColor": "red", "query": ANNOTATION, "tagsColumn": "node", "textColumn": "cause",
        }]},
    }  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(dashboard(), indent=2))
