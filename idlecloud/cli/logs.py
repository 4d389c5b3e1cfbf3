"""`bus logs APP`: what an app's replicas printed, kept on the broker, and live with -f."""

from __future__ import annotations

import json
from collections import deque
from datetime import datetime
from typing import Annotated

import typer

from bus.defaults import BROKER_URL
from bus.logs import parse_span, read_logs
from idlecloud.cli._common import (
    JsonOption,
    NamespaceOption,
    UrlOption,
    console,
    fail,
    run_async,
)
from idlecloud.cli.session import connect
from schemas import LogBatch, LogLine, utc_now

__all__ = ["register", "since_time"]


def since_time(since: str) -> datetime:
    """The moment ``--since`` names; a usage error, saying what is expected, otherwise."""
    try:
        return utc_now() - parse_span(since.strip())
    except ValueError as error:
        fail(f"--since {error}")


def _render(batch: LogBatch, line: LogLine, as_json: bool) -> str:
    if as_json:
        return json.dumps({
            "at": line.at.isoformat(), "app": batch.app, "replica": batch.replica_id,
            "node": batch.node, "stream": line.stream, "text": line.text,
        })  # fmt: skip
    return f"{line.at:%H:%M:%S} {batch.replica_id} | {line.text}"


def logs(
    app: Annotated[str, typer.Argument(help="The app whose replicas' output to show.")],
    namespace: NamespaceOption = "default",
    replica: Annotated[str | None, typer.Option(help="Only this replica.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Go on printing new lines until Ctrl-C.")
    ] = False,
    since: Annotated[
        str, typer.Option(help="From how long ago: 30s, 10m, 2h, 7d (kept up to 7 days).")
    ] = "10m",
    tail: Annotated[
        int | None, typer.Option(min=0, help="Only the last N lines stored (then follow).")
    ] = None,
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """What an app's replicas printed (stdout and stderr), kept on the broker."""
    start = since_time(since)

    async def show() -> None:
        held: deque[str] | None = deque(maxlen=tail) if tail is not None else None
        async with connect(url, "logs") as bus:
            async for item in read_logs(bus, namespace, since=start, app=app, replica=replica,
                                        follow=follow):  # fmt: skip
                if item is None:  # what was stored is read
                    for text in held or ():
                        console.print(text, highlight=False, soft_wrap=True)
                    held = None
                    continue
                text = _render(*item, as_json)
                if held is not None:
                    held.append(text)
                else:
                    console.print(text, highlight=False, soft_wrap=True)

    run_async(show)


def register(app: typer.Typer) -> None:
    """Add `bus logs` to the root app."""
    app.command("logs")(logs)
