"""`bus report`: the lab's figures as PNG files, straight from InfluxDB (no Grafana needed).

Every panel of :mod:`services.metrics.panels` becomes one PNG: its queries run over the
last ``since_s`` seconds in about 200 steps, each series is a step line named like
Grafana would name it (a value holds until the next sample, for at most
:func:`hold_s`; past that, and after a series' last sample, the line stops: a gap, never
a slope or a value carried to the end of the window), the y axis carries the panel's
unit, and each visit of a person to a PC is a shaded span labelled with the PC's name and
how long the person stayed (to the end of the window if they are still there).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no screen here, and none needed

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from services.metrics.panels import PANELS, Panel, concrete

__all__ = ["Visit", "figures", "held", "hold_s", "render", "slug", "visits"]

Query = Callable[[str], dict[str, Any]]
_UNITS = {"millicores": "CPU (millicores)", "replicas": "replicas", "percentunit": "share"}
#: Every presence change, per PC: a visit starts at busy 1 and ends at the next busy 0.
_PRESENCE = 'SELECT "busy" FROM "presence" WHERE $timeFilter GROUP BY "node"'


@dataclass(frozen=True, slots=True)
class Visit:
    """A person at a PC, from ``start`` to ``end`` (matplotlib date numbers)."""

    node: str
    start: float
    end: float

    @property
    def label(self) -> str:
        """The PC and how long the person stayed, e.g. ``edge 12 s`` or ``edge 3 min``."""
        seconds = (self.end - self.start) * 86_400
        shown = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
        return f"{self.node} {shown}"


def hold_s(step_s: float) -> float:
    """How long a value holds without a new sample: three steps, and at least 15 s (agents
    sample every 5 s by default)."""
    return max(3 * step_s, 15.0)


def held(times: list[float], values: list[float | None], hold_days: float) -> list[float]:
    """Each interval's value: its own sample, else the last one within ``hold_days``, else
    NaN (a gap)."""
    result, last, last_at = [], math.nan, -math.inf
    for at, value in zip(times, values, strict=True):
        if value is not None:
            last, last_at = value, at
        result.append(last if at - last_at <= hold_days else math.nan)
    return result


def visits(answer: dict[str, Any], window_end: float) -> list[Visit]:
    """Each person's visit to each PC from the presence changes InfluxDB returned (a visit
    still going on ends at ``window_end``)."""
    found = []
    for series in _series(answer):
        node = (series.get("tags") or {}).get("node", "?")
        start = None
        for timestamp, busy in series["values"]:
            if busy == 1 and start is None:
                start = _when(timestamp)
            elif busy == 0 and start is not None:
                found.append(Visit(node, start, _when(timestamp)))
                start = None
        if start is not None:
            found.append(Visit(node, start, window_end))
    return sorted(found, key=lambda visit: (visit.start, visit.node))


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


def slug(title: str) -> str:
    """A panel's title as a file name."""
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
    written = []
    for panel, figure in figures(query, since_s):
        path = out / f"{slug(panel.title)}.png"
        figure.savefig(path)
        plt.close(figure)
        written.append(path)
    return written


def figures(query: Query, since_s: float) -> list[tuple[Panel, Figure]]:
    """Each panel's figure over the last ``since_s`` seconds (the caller closes them).

    Raises:
        ValueError: InfluxDB refused a query.
    """
    step_s = max(1.0, since_s / 200)
    now = float(mdates.date2num(datetime.now(UTC)))  # type: ignore[no-untyped-call]
    people = visits(query(concrete(_PRESENCE, since_s, step_s)), now)
    return [(panel, _figure(panel, query, since_s, step_s, people)) for panel in PANELS]


def _figure(
    panel: Panel, query: Query, since_s: float, step_s: float, people: list[Visit]
) -> Figure:
    figure, axes = plt.subplots(figsize=(10, 4.5), dpi=100)
    plotted = 0
    for panel_query in panel.queries:
        text = panel_query.text.replace("fill(previous)", "fill(null)")  # held below, bounded
        for series in _series(query(concrete(text, since_s, step_s))):
            times = [_when(t) for t, _ in series["values"]]
            values = held(times, [v for _, v in series["values"]], hold_s(step_s) / 86_400)
            if all(math.isnan(v) for v in values):
                continue
            label = _label(panel_query.alias, series.get("tags") or {})
            axes.step(times, values, where="post", label=label)
            plotted += 1
    for index, visit in enumerate(people):
        axes.axvspan(visit.start, visit.end, color="red", alpha=0.12,
                     label="a person at a PC" if index == 0 else None)  # fmt: skip
        axes.annotate(visit.label, (visit.start, 1.0), xycoords=("data", "axes fraction"),
                      xytext=(2, -12 - 10 * (index % 3)), textcoords="offset points",
                      fontsize="x-small", color="darkred")  # fmt: skip
    axes.set_title(panel.title)
    axes.set_ylabel(_UNITS.get(panel.unit, panel.unit))
    axes.set_xlabel("time (UTC)")
    axes.xaxis_date()
    formatter = mdates.DateFormatter("%H:%M:%S")  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_formatter(formatter)
    axes.grid(alpha=0.3)
    if plotted or people:  # beside the plot: it never hides a line or a visit's label
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    else:
        axes.text(0.5, 0.5, "no data in this window", ha="center", transform=axes.transAxes)
    figure.autofmt_xdate()
    figure.tight_layout()
    return figure
