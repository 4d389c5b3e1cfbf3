"""The `bus` command line: the admin's and the user's tool."""

from __future__ import annotations

import logging
import os
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer
from pydantic import ValidationError

from bus.service import configure_logging
from idlecloud.cli import (
    agent,
    auth,
    broker,
    control,
    events,
    job,
    logs,
    platform,
    report,
    sim,
    usage,
    worker,
)
from idlecloud.cli._common import describe, fail
from nodeagent.load import PLATFORM_MARKER

__all__ = ["app", "main"]

app = typer.Typer(
    name="bus",
    help="idlecloud: run researchers' workers on the idle time of lab PCs.\n\n"
    "Exit codes: 0 done, 1 refused by the platform, 2 a usage or input error, "
    "3 a service that cannot be reached.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version() -> str:
    try:
        return version("idlecloud")
    except PackageNotFoundError:  # pragma: no cover - run from a tree that was not installed
        return "unknown (not installed)"


def _show_version(show: bool) -> None:
    if show:
        typer.echo(f"bus (idlecloud) {_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    _version_flag: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_show_version
        ),
    ] = False,
) -> None:
    """Options of every command."""


platform.register(app)
control.register(app)
events.register(app)
logs.register(app)
auth.register(app)
broker.register(app)
report.register(app)
usage.register(app)
worker.register(app)
app.add_typer(job.job_app, name="job")
app.add_typer(agent.agent_app, name="agent")
app.add_typer(sim.sim_app, name="sim")


def main() -> None:
    """Entry point of the `bus` console script."""
    os.environ.setdefault(PLATFORM_MARKER, "1")  # this process and its children: the platform's
    configure_logging("WARNING")  # IDLECLOUD_LOG_LEVEL overrides it
    for library in ("aio_pika", "aiormq"):  # their connection errors are reported by `bus`
        logging.getLogger(library).setLevel(logging.CRITICAL)
    try:
        app(prog_name="bus", standalone_mode=True)
    except ValidationError as error:  # a name or number the wire would refuse
        try:
            fail(describe(error))
        except typer.Exit as done:
            raise SystemExit(done.exit_code) from None
