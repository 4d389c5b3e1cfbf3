"""The README tells the truth: its commands exist with the options it shows, and the
outputs it shows are what a real run prints.

Every ``console`` block is parsed: each `bus …` command must exist and accept every option
the README gives it (its ``--help`` says so). The walk-through of "Run the platform" is then
run for real (the control plane, the thesis's four PCs as real agents, real `bus`
processes), and the `bus apps` tables and the quota refusal it shows are compared line by
line with what `bus` printed. A block may say ``# abbreviated`` on its first line when
its outputs are shortened; at most three do.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from .control_plane import control_plane, thesis_pcs
from .test_cli import bus_cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```console\n(.*?)```", README, flags=re.DOTALL)
#: Subcommands: the words of a `bus` command line before its arguments.
GROUPS = {"quota", "token", "sim", "agent", "schemas", "dev", "broker", "tls", "job"}


def commands(block: str) -> list[list[str]]:
    """Every `bus` command of a block, as words: continuations joined, comments and the
    `;`, `&` and `&&` separators understood."""
    text = re.sub(r"\\\n\s*", " ", block)
    found = []
    for line in text.splitlines():
        if not line.startswith(("$ ", "# ")):
            continue
        try:
            words = shlex.split(line[2:], comments=True)
        except ValueError:  # a placeholder such as <alice's key>
            words = line[2:].split("  #")[0].split()
        command: list[str] = []
        for word in [*words, ";"]:
            if word in (";", "&", "&&"):
                while command and re.fullmatch(r"[A-Z_]+=\S*", command[0]):
                    command.pop(0)  # VARIABLE=value before the command
                if command[:1] == ["bus"]:
                    found += expanded(command)
                command = []
            else:
                command.append(word.rstrip("&"))
    return found


def expanded(command: list[str]) -> list[list[str]]:
    """``bus sim up|down`` (an overview's alternatives) as one command each."""
    for index, word in enumerate(command[:3]):
        if "|" in word and not word.startswith("-"):
            return [
                one
                for alternative in word.split("|")
                for one in expanded([*command[:index], alternative, *command[index + 1 :]])
            ]
    return [command]


def path_and_options(command: list[str]) -> tuple[list[str], set[str]]:
    path = [] if command[1].startswith("-") else command[1:2]
    path += command[2:3] if path and path[0] in GROUPS else []
    options = {word.split("=")[0] for word in command if word.startswith("--")}
    return path, options


def test_at_most_three_blocks_are_abbreviated() -> None:
    assert BLOCKS, "the README has console blocks"
    assert sum(block.startswith("# abbreviated") for block in BLOCKS) <= 3


@pytest.mark.parametrize(
    "command",
    [command for block in BLOCKS for command in commands(block)],
    ids=lambda command: " ".join(command)[:60],
)
def test_every_bus_command_in_the_readme_exists_with_its_options(command: list[str]) -> None:
    path, options = path_and_options(command)
    helped = bus_cli(*path, "--help")
    assert helped.returncode == 0, f"bus {' '.join(path)}: {helped.stderr}"
    missing = [option for option in options if option not in helped.stdout]
    assert missing == [], f"bus {' '.join(path)} has no {missing}"


def shown_after(block: str, command: str) -> list[list[str]]:
    """Each output the README shows after ``$ <command>`` in ``block``, as lines."""
    outputs, current = [], None
    for line in block.splitlines():
        if line.startswith("$ "):
            current = [] if line[2:].split("  #")[0].strip() == command else None
            if current is not None:
                outputs.append(current)
        elif current is not None:
            current.append(line.rstrip())
    return outputs


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_the_walk_through_prints_what_the_readme_shows(tmp_path: Path) -> None:
    (block,) = [b for b in BLOCKS if "$ bus deploy big -n alice" in b]
    shown_apps = shown_after(block, "bus apps -n alice")
    (shown_refusal,) = shown_after(
        block, "bus deploy big -n alice --image local --command true --replicas 10"
    )
    async with control_plane(tmp_path, thesis_pcs("")) as plane:

        async def bus(*arguments: str) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(bus_cli, *arguments, url=plane.url)

        async def apps_when(predicate: object) -> list[str]:
            for _ in range(200):
                reply = json.loads((await bus("apps", "-n", "alice", "--json")).stdout)
                if reply["apps"] and predicate(reply["apps"][0]):  # type: ignore[operator]
                    await asyncio.sleep(1.5)  # and it holds (no move in flight)
                    printed = (await bus("apps", "-n", "alice")).stdout
                    return [line.rstrip() for line in printed.splitlines()]
                await asyncio.sleep(0.3)
            raise AssertionError(f"the app never got there: {reply}")

        quota = await bus("quota", "set", "alice", "--cpu-millicores", "20000",
                          "--memory-mib", "65536")  # fmt: skip
        assert quota.returncode == 0, quota.stderr
        deployed = await bus(*shlex.split(
            "deploy spin -n alice --image local --replicas 15 --cpu-millicores 1000 "
            "--command python3 --command -c --command 'import time; time.sleep(600)'"))  # fmt: skip
        assert deployed.stdout.strip() == "spin: 15 replicas admitted", deployed.stderr
        running = await apps_when(lambda app: app["running"] == 15)
        assert running == shown_apps[0]
        plane.simulation.login("edge")
        degraded = await apps_when(
            lambda app: app["running"] == 12 and app["starting"] == 0 and app["reason"]
        )
        assert degraded == shown_apps[1]
        refused = await bus(*shlex.split(
            "deploy big -n alice --image local --command true --replicas 10"))  # fmt: skip
        assert refused.returncode == 1
        assert " ".join(refused.stderr.split()) == " ".join(" ".join(shown_refusal).split())
