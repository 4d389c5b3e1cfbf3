"""`bus worker MODULE:APP`: serve an app's tasks."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from bus.credentials import key_holder
from bus.defaults import BROKER_URL
from bus.service import run
from idlecloud.cli._common import UrlOption, fail, run_async

if TYPE_CHECKING:
    from bus.abc import Service

__all__ = ["register"]


def worker(
    target: Annotated[str, typer.Argument(help="The app to serve, as MODULE:ATTRIBUTE.")],
    url: UrlOption = BROKER_URL,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=1024, help="Processes/threads.")
    ] = 1,
    token_file: Annotated[
        str | None,
        typer.Option(
            "--token-file",
            envvar="IDLECLOUD_TOKEN_FILE",
            help="File holding the broker token; re-read before it expires.",
        ),
    ] = None,
    grace_s: Annotated[
        float, typer.Option("--grace", help="Seconds in-flight tasks get after SIGTERM.")
    ] = 30.0,
) -> None:
    """Serve an app's tasks until SIGTERM (in-flight tasks finish or are requeued)."""
    # Imported here, not at the top: every `bus` process (a PC's agent among them) loads
    # this module, and only a worker needs the SDK.
    from bus.sdk.app import App
    from bus.sdk.contract import TokenFile, broker_url_with_token
    from bus.sdk.pool import load_target
    from bus.sdk.worker import Worker

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`, find modules where we stand
    try:
        app = load_target(target)
    except (ValueError, ImportError, AttributeError) as error:
        fail(f"cannot load {target!r}: {error}. Give MODULE:ATTRIBUTE, e.g. tasks:app")
    if not isinstance(app, App):
        fail(f"{target} is a {type(app).__name__}, not an idlecloud App")
    if not app.tasks:
        fail(f"app {app.app} in {target} has no tasks; decorate functions with @app.task")
    try:
        served = Worker(app, target=target, concurrency=concurrency)
    except ValueError as error:
        fail(str(error))
    name = f"worker {app.namespace}/{app.app}"
    services: list[Service] = []
    try:
        if token_file:  # a replica: the platform keeps its token file fresh
            connect_to = broker_url_with_token(url, token_file)
            services.append(TokenFile(token_file))
        else:  # a researcher's own machine: her API key, if she has one
            connect_to, name, refresher = run_async(lambda: key_holder(url, name))
            services.extend([refresher] if refresher is not None else [])
    except ValueError as error:
        fail(f"{error}; check --token-file or IDLECLOUD_TOKEN_FILE")
    import uvloop  # a worker's event loop carries every task message: the faster one

    run(
        connect_to,
        [*services, served],
        name=name,
        grace_s=grace_s,
        declare=not services,  # a token's scopes do not allow it; the platform has declared it
        loop_factory=uvloop.new_event_loop,
    )


def register(app: typer.Typer) -> None:
    """Add `bus worker` to the root app."""
    app.command("worker")(worker)
