"""The `bus` command line: the admin's and the user's tool."""

from __future__ import annotations

import logging
import os

import typer

from bus.cli import agent, auth, control, events, platform, report, sim, worker
from bus.service import configure_logging
from nodeagent.load import PLATFORM_MARKER

__all__ = ["app", "main"]

app = typer.Typer(
    name="bus",
    help="idlecloud: run researchers' workers on the idle time of lab PCs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
platform.register(app)
control.register(app)
events.register(app)
auth.register(app)
report.register(app)
worker.register(app)
app.add_typer(agent.agent_app, name="agent")
app.add_typer(sim.sim_app, name="sim")


def main() -> None:
    """Entry point of the `bus` console script."""
    os.environ.setdefault(PLATFORM_MARKER, "1")  # this process and its children: the platform's
    configure_logging("WARNING")  # IDLECLOUD_LOG_LEVEL overrides it
    for library in ("aio_pika", "aiormq"):  # their connection errors are reported by `bus`
        logging.getLogger(library).setLevel(logging.CRITICAL)
    app(prog_name="bus")
