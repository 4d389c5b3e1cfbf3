"""`bus sim`: simulated lab PCs (real agents on this machine)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from bus.defaults import BROKER_URL
from idlecloud.cli._common import JsonOption, UrlOption, console, fail, print_json, table
from nodeagent.sim import THESIS_NODES, SimNode, Simulation

__all__ = ["sim_app"]

sim_app = typer.Typer(help="Simulated lab PCs: real agents on this machine.", no_args_is_help=True)

FolderOption = Annotated[
    Path,
    typer.Option("--dir", envvar="IDLECLOUD_SIM_DIR", help="Where the simulated PCs live."),
]
#: One simulation folder per user of the machine (by uid: a replica's has no name).
DEFAULT_DIR = Path(tempfile.gettempdir()) / f"idlecloud-sim-{os.getuid()}"


def _parse_sim_node(text: str) -> SimNode:
    name, _, rest = text.partition(":")
    cpu, _, memory = rest.partition(":")
    try:
        return SimNode(name, int(cpu or 4000), int(memory or 8192))
    except ValueError:
        fail(f"--pc {text!r}: expected NAME[:CPU_MILLICORES[:MEMORY_MIB]], e.g. edge:8000:16384")


@sim_app.command("up")
def up(
    url: UrlOption = BROKER_URL,
    folder: FolderOption = DEFAULT_DIR,
    nodes: Annotated[
        list[str] | None,
        typer.Option(
            "--pc", help="NAME[:CPU_MILLICORES[:MEMORY_MIB]]; default: the thesis's four PCs."
        ),
    ] = None,
    start_idle_s: Annotated[float, typer.Option(help="Idle seconds before a PC takes work.")] = 0,
    continue_idle_s: Annotated[float, typer.Option(help="Idle seconds before resuming.")] = 5,
    max_suspend_s: Annotated[float, typer.Option(help="Paused seconds before eviction.")] = 60,
    runtime: Annotated[
        str, typer.Option(help="How replicas run: 'process' or 'docker' (containers).")
    ] = "process",
    foreign_load: Annotated[
        bool,
        typer.Option(
            help="Count this machine's other CPU load as a person at every PC (off: "
            "your own client and builds run here too)."
        ),
    ] = False,
) -> None:
    """Start the simulated PCs (the ones already running are left alone)."""
    if runtime not in ("process", "docker"):
        fail(f"--runtime {runtime!r}: use 'process' or 'docker'")
    simulated = tuple(_parse_sim_node(text) for text in nodes) if nodes else THESIS_NODES
    policy = (
        "--start-idle-s", str(start_idle_s), "--continue-idle-s", str(continue_idle_s),
        "--max-suspend-s", str(max_suspend_s),
    )  # fmt: skip
    started = Simulation(folder).up(
        url, simulated, runtime=runtime, foreign_load=foreign_load, extra_args=policy
    )
    console.print(f"started {', '.join(started) or 'nothing (all were running)'} in {folder}")


@sim_app.command("status")
def status(folder: FolderOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Show the simulated PCs, their agents and who is logged in."""
    report = Simulation(folder).status()
    if as_json:
        print_json(report)
        return
    if not report:
        console.print(f"no simulated PCs in {folder}; start them with `bus sim up`")
        return
    shown = table("PC", "CPU (m)", "memory (MiB)", "agent", "people")
    for name, entry in report.items():
        shown.add_row(
            name,
            str(entry["cpu_millicores"]),
            str(entry["memory_mib"]),
            str(entry["agent"]),
            str(entry["sessions"]),
        )
    console.print(shown)


def _act(action: Literal["login", "logout", "kill"]) -> Any:
    """The command that does ``action`` to one simulated PC."""

    def command(
        name: Annotated[str, typer.Argument(help="The PC.")], folder: FolderOption = DEFAULT_DIR
    ) -> None:
        try:
            getattr(Simulation(folder), action)(name)
        except KeyError as error:
            fail(str(error.args[0]))

    return command


sim_app.command("login", help="A person sits down at a PC (writes a real utmp login record).")(
    _act("login"))  # fmt: skip
sim_app.command("logout", help="The person at a PC leaves.")(_act("logout"))
sim_app.command("kill", help="Pull a PC's plug: its agent and all its replicas die at once.")(
    _act("kill"))  # fmt: skip


@sim_app.command("down")
def down(folder: FolderOption = DEFAULT_DIR) -> None:
    """Stop every simulated PC and its replicas."""
    Simulation(folder).down()
    console.print("all simulated PCs stopped")
