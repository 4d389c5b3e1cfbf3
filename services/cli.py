"""Running control-plane services from the command line: `python -m services.<name>`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from bus.abc import Service
from bus.devservices import broker_url
from bus.service import run

__all__ = ["run_services"]


def run_services(name: str, *factories: Callable[[], Service]) -> None:
    """Parse ``--url`` (or ``IDLECLOUD_URL``) and run the services until SIGTERM."""
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{name}",
        description=f"Run idlecloud's {name} service until SIGTERM (one leads, others stand by).",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("IDLECLOUD_URL", broker_url()),
        help="the broker URL (default: $IDLECLOUD_URL or the local development broker)",
    )
    arguments = parser.parse_args()
    run(arguments.url, [factory() for factory in factories], name=name, grace_s=5.0)
