"""`bus usage`: the CPU-hours a namespace reserved and used, per app, PC or day."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from bus.defaults import BROKER_URL
from idlecloud.cli._common import (
    Exit,
    JsonOption,
    OptionalNamespaceOption,
    UrlOption,
    console,
    fail,
    print_json,
    table,
)
from idlecloud.cli.logs import since_time
from idlecloud.cli.session import ask
from schemas import UsageQuery, UsageReply, UsageRow
from schemas.usage import USAGE_BY
from services.metrics.usage import totals

__all__ = ["register"]

_HOUR_S = 3600.0


def _hours(seconds: float) -> str:
    """CPU-hours: two decimals from 10 up, four below (a test job's share shows)."""
    hours = seconds / _HOUR_S
    return f"{hours:,.2f}" if hours >= 10 else f"{hours:.4f}"


def _share(used_s: float, reserved_s: float) -> str:
    return f"{100 * used_s / reserved_s:.0f} %" if reserved_s else "—"


def _pcs(row: UsageRow, shown: int = 3) -> str:
    """The PCs an app's replicas ran on: the first few, and how many more."""
    more = len(row.nodes) - shown
    return ", ".join(row.nodes[:shown]) + (f" +{more}" if more > 0 else "")


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else f"{moment:%Y-%m-%d %H:%M}"


def _part(row: UsageRow) -> str:
    if row.day is not None:
        return f"{row.day:%Y-%m-%d}"
    return row.app or row.node or "—"


def usage(
    namespace: OptionalNamespaceOption = None,
    since: Annotated[str, typer.Option(help="From how long ago: 30m, 2h, 30d.")] = "30d",
    by: Annotated[
        str, typer.Option(help="Per app, per pc (an admin's question) or per day.")
    ] = "app",
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the rows as a bar chart into this PNG file.")
    ] = None,
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """CPU-hours reserved and used by a namespace's replicas (every namespace's, for an
    admin without -n), from the samples the PCs' agents send: reserved is what placement
    held for them, used what their control groups counted. Per app, deleted apps stay
    listed, with the PCs they ran on and their first and last samples."""
    if by not in USAGE_BY:
        fail(f"--by {by!r}: use {', '.join(USAGE_BY)}")
    query = UsageQuery(namespace=namespace, since=since_time(since), by=by)
    reply = ask(url, query.owner(), query, UsageReply)
    if reply.unavailable:
        fail(f"{reply.unavailable}; is InfluxDB up, and does `bus up` run with --influx-db?",
             Exit.UNREACHABLE)  # fmt: skip
    reserved_s, used_s = totals(reply.rows)
    if as_json:
        print_json(reply.model_dump(mode="json") | {"reserved_cpu_s": reserved_s,
                                                    "used_cpu_s": used_s})  # fmt: skip
    else:
        spans = by != "day"  # a day's row spans its day
        shown = table("namespace", by, "replicas", *(("PCs",) if by == "app" else ()),
                      *(("from", "to (UTC)") if spans else ()), "reserved CPU-h",
                      "used CPU-h", "used")  # fmt: skip
        for row in reply.rows:
            reserved, used = row.reserved_cpu_s, row.used_cpu_s
            shown.add_row(row.namespace, _part(row), str(row.replicas),
                          *((_pcs(row),) if by == "app" else ()),
                          *((_when(row.first_at), _when(row.last_at)) if spans else ()),
                          _hours(reserved), _hours(used), _share(used, reserved))  # fmt: skip
        console.print(shown)
        console.print(f"{_hours(reserved_s)} CPU-hours reserved, {_hours(used_s)} used "
                      f"({_share(used_s, reserved_s)}) from {reply.since:%Y-%m-%d %H:%M} to "
                      f"{reply.until:%Y-%m-%d %H:%M} UTC")  # fmt: skip
    if plot is not None:
        _draw(reply, plot)
        if not as_json:
            console.print(f"wrote {plot}")


def _draw(reply: UsageReply, out: Path) -> None:
    """Reserved and used CPU-hours as paired bars, one pair per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{row.namespace}/{_part(row)}" for row in reply.rows]
    positions = range(len(labels))
    figure, axes = plt.subplots(figsize=(max(7.0, 0.6 * len(labels) + 2), 4.5), dpi=100)
    axes.bar([p - 0.2 for p in positions], [r.reserved_cpu_s / _HOUR_S for r in reply.rows],
             width=0.4, label="reserved", color="lightgray")  # fmt: skip
    axes.bar([p + 0.2 for p in positions], [r.used_cpu_s / _HOUR_S for r in reply.rows],
             width=0.4, label="used", color="tab:blue")  # fmt: skip
    axes.set_xticks(list(positions), labels, rotation=30, ha="right", fontsize="small")
    axes.set_ylabel("CPU-hours")
    axes.set_title(f"CPU-hours per {reply.by}\n{reply.since:%Y-%m-%d %H:%M} to "
                   f"{reply.until:%Y-%m-%d %H:%M} UTC", fontsize="medium")  # fmt: skip
    axes.set_xlim(-1, max(len(labels), 2))  # a bar or two stay bars, not walls
    if not labels:
        axes.text(0.5, 0.5, "no usage in this window", ha="center", transform=axes.transAxes)
    axes.legend()
    figure.tight_layout()
    try:
        figure.savefig(out)
    except OSError as error:
        fail(f"cannot write {out}: {error.strerror}")
    finally:
        plt.close(figure)


def register(app: typer.Typer) -> None:
    """Add `bus usage` to the root app."""
    app.command("usage")(usage)
