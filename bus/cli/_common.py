"""What every `bus` command shares: the broker URL option, output, and error handling."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import aiormq
import typer
from rich.console import Console

from bus.devservices import DevServiceError, broker_url
from bus.errors import BusError

__all__ = ["DEFAULT_URL", "JsonOption", "UrlOption", "console", "fail", "print_json", "run_async"]

T = TypeVar("T")

DEFAULT_URL = broker_url()
console = Console()
_errors = Console(stderr=True)

UrlOption = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="IDLECLOUD_URL",
        help="Broker URL, amqp://USER:PASSWORD@HOST:PORT/VHOST.",
        show_default="the local broker",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``bus: <message>`` on stderr and exit with ``code``."""
    _errors.print(f"[bold red]bus:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(value: Any) -> None:
    """Write ``value`` as JSON on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine, turning the library's errors into a one-line message and exit 2."""
    try:
        return asyncio.run(factory())
    except (BusError, DevServiceError) as error:
        fail(str(error))
    except aiormq.exceptions.ChannelAccessRefused as error:
        fail(f"the broker refused: {error.args[0] if error.args else error} "
             "(your credentials do not allow this)", code=1)  # fmt: skip
    except aiormq.exceptions.ProbableAuthenticationError:
        fail("the broker refused the credentials (a wrong password, or an expired token)")
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
