"""A local Docker engine and locally built images, for tests, benchmarks and the demo.

No registry is reachable from our machines, so images are built here: the test image is
Debian's static busybox in an otherwise empty root file system, imported with
``docker import`` in about a second. dockerd, installed from Debian's ``docker.io`` if
missing (as root), is started with no bridge and no iptables rules, so it creates no
addresses in private ranges; containers use the host's network and reach the broker on
127.0.0.1.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

from idlecloud.dev.services import DevServiceError, apt_install, ensure_daemon, run_command

__all__ = ["TEST_IMAGE", "busybox_image", "docker_running", "ensure_docker", "image_present"]

#: The image tests and benchmarks run: busybox's shell and tools as /bin/*.
TEST_IMAGE = "idlecloud/busybox:test"
_DOCKERD_FLAGS = ("--bridge=none", "--iptables=false", "--ip6tables=false")
_DOCKERD_LOG = Path("/var/log/idlecloud-dockerd.log")
_BUSYBOX = Path("/bin/busybox")
_APPLETS = ("sh", "sleep", "cat", "echo", "true", "false", "ls", "id", "env", "yes", "head")


def _docker() -> str:
    found = shutil.which("docker")
    if found is None:
        raise DevServiceError("the docker client is missing; install it: apt-get install docker.io")
    return found


def docker_running() -> bool:
    """True if a Docker engine answers on this machine."""
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(
        [_docker(), "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


def image_present(tag: str) -> bool:
    """True if the Docker engine holds an image of this tag."""
    present = subprocess.run(
        [_docker(), "image", "inspect", tag], capture_output=True, timeout=30, check=False
    )
    return present.returncode == 0


def ensure_docker(timeout_s: float = 60.0) -> None:
    """Install (as root) and start dockerd without a bridge, unless one already answers.

    Raises:
        DevServiceError: it could not be installed or did not start in ``timeout_s``.
    """
    ensure_daemon(["dockerd", *_DOCKERD_FLAGS], package="docker.io", log_path=_DOCKERD_LOG,
                  up=docker_running, what="dockerd", timeout_s=timeout_s)  # fmt: skip


def _busybox_root() -> bytes:
    """A tar of a root file system holding busybox and its applets' links."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "tmp"):
            entry = tarfile.TarInfo(folder)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(entry)
        tar.add(_BUSYBOX, "bin/busybox")
        for applet in _APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    return buffer.getvalue()


def busybox_image(tag: str = TEST_IMAGE) -> str:
    """Build the busybox test image unless it exists; return its tag.

    Raises:
        DevServiceError: dockerd is not running or busybox-static cannot be installed.
    """
    if image_present(tag):
        return tag
    static = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "busybox-static"],
        capture_output=True,
        text=True,
        check=False,
    )
    if "ok installed" not in static.stdout:  # Debian's plain busybox needs a libc
        apt_install("busybox-static")
    run_command([_docker(), "import", "-c", "ENV PATH=/bin", "-", tag], stdin=_busybox_root())
    return tag
