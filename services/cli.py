"""Running control-plane services from the command line: `python -m services.<name>`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bus.abc import Service
from bus.service import run
from services.settings import ServiceEnv, service_env

__all__ = ["run_services"]


def run_services(name: str, *factories: Callable[[ServiceEnv], Service]) -> None:
    """Parse ``--url`` (or ``IDLECLOUD_URL``), read the settings (:mod:`services.settings`)
    and run the services until SIGTERM.

    Raises:
        SystemExit: 2, with the reason, if a setting does not fit or is missing.
    """
    program = f"python -m services.{name}"
    parser = argparse.ArgumentParser(
        prog=program,
        description=f"Run idlecloud's {name} service until SIGTERM (one leads, others stand by). "
        "Settings come from IDLECLOUD_* variables (the README lists them).",
    )
    parser.add_argument(
        "--url", help="the broker URL (default: $IDLECLOUD_URL or the local development broker)"
    )
    arguments = parser.parse_args()
    env = service_env(program)
    try:
        services = [factory(env) for factory in factories]
    except ValueError as error:  # a setting it needs is missing; the message says which
        print(f"{program}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as error:  # a file a setting names
        print(f"{program}: cannot read {error.filename}: {error.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    run(arguments.url or env.url, services, name=name, grace_s=5.0)
