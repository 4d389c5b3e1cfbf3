"""The main job, shorter: `python -m examples.stereo.demo` as a newcomer runs it, with a
real broker, InfluxDB, `bus up`, four simulated PCs (real agents) and a person sitting
down at Edge halfway through; its replicas as processes, and as Docker containers of the
worker image built here from a debootstrap root file system."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def summary_rows(output: str) -> dict[str, str]:
    """The summary table's rows, name to value."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│|]", line) if cell.strip()]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("runtime", ["process", "docker"])
async def test_the_demo_finishes_every_task_while_a_person_sits_down_at_edge(
    tmp_path: Path, runtime: str, request: pytest.FixtureRequest
) -> None:
    if runtime == "docker":
        request.getfixturevalue("docker_image")  # dockerd, started the tests' way
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.stereo.demo", "--pairs", "12", "--replicas", "13",
        "--runtime", runtime, "--out", str(tmp_path), cwd=ROOT,
        env={**os.environ, "COLUMNS": "160"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=880)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-5000:]
    rows = summary_rows(text)
    assert rows["tasks"].startswith("48/48"), rows
    for check in ("every task done", "a replica evicted", "a replica rescheduled",
                  "accuracy within the bound (95%)"):  # fmt: skip
        assert rows[check] == "yes", rows
    assert int(rows["rescheduled elsewhere"]) >= 1
    assert re.match(r"\d+ ms$", rows["login to frozen, busy"]), rows
    assert "after the logout" in rows["edge used again"], rows
    accuracy = float(rows["reconstruction"].split("%")[0])
    assert accuracy >= 95.0
    assert (tmp_path / "cloud.ply").read_bytes().startswith(b"ply\nformat binary_little_endian")
    assert len(list((tmp_path / "report").glob("*.png"))) == 5
    assert "stopping everything the demo started" in text
    assert f"({runtime} runtime)" in rows["replicas"]
