"""A worker image built on this machine: Debian's Python with idlecloud installed offline.

No registry is reachable, so the image is made from a root file system that
``debootstrap --variant=minbase --include=python3,python3-venv bookworm`` builds (once,
cached under :data:`CACHE`), into which the project and what a worker needs of its
dependencies are installed from wheels made on the host (``pip wheel``), with no network
inside. An app's own code is copied to :data:`WORKER_APP_DIR`. The tag carries a hash of
everything that went in, so a changed source makes a new image and an unchanged one is
reused at once.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

from idlecloud.dev.docker import docker_running, image_present
from idlecloud.dev.services import DevServiceError, apt_install, run_command

__all__ = ["CACHE", "WORKER_APP_DIR", "worker_image"]

CACHE = Path("/var/cache/idlecloud")
#: Where an app's code lives in the image (put it on PYTHONPATH).
WORKER_APP_DIR = PurePosixPath("/opt/idlecloud/app")
_VENV = PurePosixPath("/opt/idlecloud/venv")
_ROOT = Path(__file__).resolve().parents[2]
_SOURCES = ("pyproject.toml", "bus", "idlecloud", "schemas", "services", "nodeagent")
_EXTRA_WHEELS = ("numpy",)  # what the example apps import beyond the SDK
#: What a worker needs of the project's dependencies (not the control plane's, the agent's
#: or the report's): the image installs only these.
_WORKER_NEEDS = ("aio-pika", "pydantic", "pyjwt[crypto]", "psutil", "typer", "rich", "aiohttp",
                 "uvloop")  # fmt: skip
_MIRROR = "http://deb.debian.org/debian"


def _digest(app_dir: Path) -> str:
    hashed = hashlib.sha256()
    for top in (*(_ROOT / name for name in _SOURCES), app_dir):
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" not in path.parts:
                hashed.update(str(path.relative_to(top.parent)).encode())
                hashed.update(path.read_bytes())
    return hashed.hexdigest()[:12]


def _base_root() -> Path:
    """Debian bookworm with Python 3 (debootstrap, made once: about a minute)."""
    base = CACHE / "bookworm-python3"
    if (base / "usr/bin/python3").exists():
        return base
    if shutil.which("debootstrap") is None:
        apt_install("debootstrap")
    scratch = base.with_name(base.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    run_command(["debootstrap", "--variant=minbase", "--include=python3,python3-venv",
                 "bookworm", str(scratch), _MIRROR], timeout_s=900)  # fmt: skip
    scratch.rename(base)
    return base


def _remove_older(name: str, keep: str) -> None:
    """Remove the repository's other tags (older builds), where no container uses them."""
    listed = run_command(["docker", "images", name, "--format", "{{.Repository}}:{{.Tag}}"])
    for old in set(listed.split()) - {keep}:
        subprocess.run(["docker", "rmi", old], capture_output=True, timeout=120, check=False)


def worker_image(app_dir: Path, name: str = "idlecloud/worker") -> str:
    """Build (unless it exists) the worker image holding ``app_dir``; return its tag.

    Args:
        app_dir: a package folder of the app's code, copied to ``WORKER_APP_DIR/<its name>``.
        name: the image's repository name.

    Raises:
        DevServiceError: dockerd is not running, or a step of the build failed.
    """
    if not docker_running():
        raise DevServiceError("dockerd is not running; start it with `bus dev up --docker`")
    tag = f"{name}:{_digest(app_dir)}"
    if image_present(tag):
        return tag
    base = _base_root()
    with tempfile.TemporaryDirectory(prefix="idlecloud-image-") as folder:
        work = Path(folder)
        root, wheels = work / "root", work / "root/tmp/wheels"
        run_command(["cp", "-a", f"{base}/.", str(root)], timeout_s=300)
        run_command([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels),
                     str(_ROOT), *_EXTRA_WHEELS], timeout_s=900)  # fmt: skip
        run_command(["chroot", str(root), "python3", "-m", "venv", str(_VENV)])
        pip = ["chroot", str(root), f"{_VENV}/bin/pip", "install", "--quiet", "--no-index",
               "--find-links", "/tmp/wheels"]  # fmt: skip
        run_command([*pip, "--no-deps", "idlecloud"], timeout_s=300)
        run_command([*pip, *_WORKER_NEEDS, *_EXTRA_WHEELS], timeout_s=900)
        shutil.rmtree(wheels)
        shutil.copytree(app_dir, root / str(WORKER_APP_DIR).lstrip("/") / app_dir.name,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        run_command(["tar", "-C", str(root), "-cf", str(work / "root.tar"), "."], timeout_s=600)
        run_command(["docker", "import", "--change", f"ENV PATH={_VENV}/bin:/usr/bin:/bin",
                     str(work / "root.tar"), tag], timeout_s=600)  # fmt: skip
    _remove_older(name, tag)
    return tag
