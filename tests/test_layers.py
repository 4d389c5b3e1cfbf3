"""The layers' contracts (pyproject's ``[tool.importlinter]``) hold, and fail when broken.

Each case copies the packages into a scratch folder, plants one import that breaks a
contract (inside a function, where a reader would not see it at the top of the file), and
runs the real ``lint-imports`` on the copy: it must name the broken contract and the
planted import. The untouched copy is the control: it must pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("idlecloud", "services", "nodeagent", "bus", "schemas")
LINT = Path(sys.executable).with_name("lint-imports")

# (file to plant in, line to plant, the contract that must break, what it must name)
BREAKS = {
    "library imports a service": (
        "bus/names.py",
        "def _planted() -> object:\n    from services.placement import scheduler\n\n"
        "    return scheduler\n",
        "The wiring on top, the agent and the services in the middle, the library below",
        "bus.names -> services.placement.scheduler",
    ),
    "agent imports a service": (
        "nodeagent/policy.py",
        "def _planted() -> object:\n    import services.state\n\n    return services.state\n",
        "The wiring on top, the agent and the services in the middle, the library below",
        "nodeagent.policy -> services.state",
    ),
    "wire models import the bus": (
        "schemas/base.py",
        "def _planted() -> object:\n    from bus import names\n\n    return names\n",
        "The wiring on top, the agent and the services in the middle, the library below",
        "schemas.base -> bus.names",
    ),
    "service imports the dev tooling": (
        "services/settings.py",
        "def _planted() -> object:\n    from idlecloud.dev import services\n\n"
        "    return services\n",
        "The wiring on top, the agent and the services in the middle, the library below",
        "services.settings -> idlecloud.dev.services",
    ),
    "one service imports another": (
        "services/gateway/auth.py",
        "def _planted() -> object:\n    from services.auth import tokens\n\n    return tokens\n",
        "The control-plane services do not import each other",
        "services.gateway.auth -> services.auth.tokens",
    ),
    "the SDK's old cycle": (
        "bus/sdk/client.py",
        "def _planted() -> object:\n    from bus.sdk.app import App\n\n    return App\n",
        "No package's modules import each other in a circle",
        "bus.sdk",
    ),
}


def _copy(tmp_path: Path) -> Path:
    scratch = tmp_path / "tree"
    scratch.mkdir()
    shutil.copy(ROOT / "pyproject.toml", scratch / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, scratch / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static"))  # fmt: skip
    return scratch


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    # the scratch tree first on the path, so its packages shadow the installed ones
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT), "--config", "pyproject.toml", "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_untouched_tree_keeps_every_contract(tmp_path: Path) -> None:
    """The control: the same copy, with nothing planted, passes."""
    result = _lint(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_a_planted_import_breaks_its_contract(tmp_path: Path, case: str) -> None:
    """An import against the layers, even one hidden in a function, fails the lint."""
    relative, planted, contract, named = BREAKS[case]
    tree = _copy(tmp_path)
    target = tree / relative
    target.write_text(target.read_text() + "\n\n" + planted)
    result = _lint(tree)
    assert result.returncode != 0, result.stdout
    assert f"{contract} BROKEN" in result.stdout
    assert named in result.stdout


def _map() -> str:
    """The map in ``docs/architecture.md`` (the code block of its "Layers" section)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Layers") :]
    return section[section.index("```") + 3 : section.index("```", section.index("```") + 3)]


def _listed(block: str, after: str, until: str) -> set[str]:
    """The names listed in ``block`` between ``after`` and ``until``, comma-separated."""
    start = block.index(after) + len(after)
    listed = re.sub(r"[\s|]+", " ", block[start : block.index(until, start)])
    return {name.strip(" /") for name in listed.split(",") if name.strip(" /")}


def test_the_map_in_the_docs_is_the_layers_contract_and_names_every_module() -> None:
    """The map's layers, top to bottom, are the contract's; it names every service
    package, every module the services share and every module of the library."""
    block = _map()
    heads = [re.match(r"^ ((?:\w+/ *\|? *)+)", line) for line in block.splitlines()]
    layers = [" | ".join(re.findall(r"(\w+)/", head[1])) for head in heads if head]
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layered = next(c for c in contracts["contracts"] if c["type"] == "layers")
    assert layers == layered["layers"]
    packages = {path.parent.name for path in (ROOT / "services").glob("*/__init__.py")}
    assert _listed(block, "the services (", ")") == packages
    shared = {path.stem for path in (ROOT / "services").glob("*.py")} - {"__init__"}
    assert _listed(block, "shared modules (", ")") == shared
    library = {path.stem for path in (ROOT / "bus").glob("*.py")} - {"__init__"} | {"sdk"}
    assert _listed(block, "the library:", "\n    v") == library
