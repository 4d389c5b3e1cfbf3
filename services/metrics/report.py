"""`bus report`: the lab's figures as PNG files, straight from InfluxDB (no Grafana needed).

Every panel of :mod:`services.metrics.panels` becomes one PNG: its queries run over the
last ``since_s`` seconds in about 200 steps, each series is a line named like Grafana
would name it, the y axis carries the panel's unit, and the moments a person sat down
at a PC are marked along the bottom.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no screen here, and none needed

import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from services.metrics.panels import ANNOTATION, PANELS, Panel, concrete

__all__ = ["render"]

Query = Callable[[str], dict[str, Any]]
_UNITS = {"millicores": "CPU (millicores)", "replicas": "replicas", "percentunit": "share"}


def _series(answer: dict[str, Any]) -> list[dict[str, Any]]:
    results = answer.get("results") or [{}]
    if "error" in results[0]:
        raise ValueError(f"InfluxDB refused a query: {results[0]['error']}")
    series: list[dict[str, Any]] = results[0].get("series") or []
    return series


def _label(alias: str, tags: dict[str, str]) -> str:
    return re.sub(r"\$tag_(\w+)", lambda m: tags.get(m.group(1), m.group(1)), alias)


def _when(timestamp: str) -> float:
    """An InfluxDB timestamp as matplotlib's date number."""
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return float(mdates.date2num(moment))  # type: ignore[no-untyped-call]


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def render(query: Query, out: Path, since_s: float) -> list[Path]:
    """Write one PNG per panel into ``out``; their paths.

    Args:
        query: runs one InfluxQL query and returns InfluxDB's JSON answer.
        out: the folder (made if missing).
        since_s: how far back the figures go.

    Raises:
        ValueError: InfluxDB refused a query.
    """
    out.mkdir(parents=True, exist_ok=True)
    step_s = max(1.0, since_s / 200)
    marks = _series(query(concrete(ANNOTATION, since_s, step_s)))
    busy = [_when(row[0]) for series in marks for row in series["values"]]
    written = []
    for panel in PANELS:
        written.append(_figure(panel, query, out, since_s, step_s, busy))
    return written


def _figure(
    panel: Panel, query: Query, out: Path, since_s: float, step_s: float, busy: list[float]
) -> Path:
    figure, axes = plt.subplots(figsize=(10, 4.5), dpi=100)
    plotted = 0
    for panel_query in panel.queries:
        for series in _series(query(concrete(panel_query.text, since_s, step_s))):
            points = [(_when(t), v) for t, v in series["values"] if v is not None]
            if not points:
                continue
            times, values = zip(*points, strict=True)
            axes.plot(times, values, label=_label(panel_query.alias, series.get("tags") or {}))
            plotted += 1
    if busy:
        axes.plot(busy, [0] * len(busy), "|", color="red", markersize=12, label="a person at a PC")
    axes.set_title(panel.title)
    axes.set_ylabel(_UNITS.get(panel.unit, panel.unit))
    axes.set_xlabel("time (UTC)")
    axes.xaxis_date()
    formatter = mdates.DateFormatter("%H:%M:%S")  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_formatter(formatter)
    axes.grid(alpha=0.3)
    if plotted or busy:
        axes.legend(loc="upper left", fontsize="small", ncol=2)
    else:
        axes.text(0.5, 0.5, "no data in this window", ha="center", transform=axes.transAxes)
    figure.autofmt_xdate()
    figure.tight_layout()
    path = out / f"{_slug(panel.title)}.png"
    figure.savefig(path)
    plt.close(figure)
    return path
