"""`bus report`: the lab's figures as PNG files from InfluxDB."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bus.defaults import INFLUX_DB, INFLUX_URL
from idlecloud.cli._common import Exit, console, fail

__all__ = ["register"]

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _seconds(since: str) -> float:
    number, unit = since[:-1], since[-1:]
    if unit not in _UNITS_S or not number.isdigit():
        raise typer.BadParameter(f"{since!r} is not like 30m, 2h or 1d")
    return int(number) * _UNITS_S[unit]


def report(
    since: Annotated[str, typer.Option(help="How far back: 30m, 2h, 1d.")] = "30m",
    out: Annotated[Path, typer.Option(help="Where to write the PNG files.")] = Path("report"),
    influx_url: Annotated[
        str, typer.Option(envvar="IDLECLOUD_INFLUX_URL", help="InfluxDB 1.x.")
    ] = INFLUX_URL,
    influx_db: Annotated[str, typer.Option(envvar="IDLECLOUD_INFLUX_DB")] = INFLUX_DB,
) -> None:
    """Render the dashboard's figures (CPU per app and PC, replicas per PC, reserved over
    capacity, namespaces' CPU, the cluster) as PNG files, with presence periods marked."""
    from services.metrics.influx import query_v1
    from services.metrics.report import render

    try:
        written = render(lambda q: query_v1(influx_url, influx_db, q), out, _seconds(since))
    except OSError as error:
        fail(f"cannot make the report from {influx_url} ({influx_db}): {error}", Exit.UNREACHABLE)
    except ValueError as error:
        fail(f"cannot make the report from {influx_url} ({influx_db}): {error}")
    for path in written:
        console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add `bus report` to the root app."""
    app.command("report")(report)
