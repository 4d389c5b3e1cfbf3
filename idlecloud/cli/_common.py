"""What every `bus` command shares: the broker URL option, output, and error handling.

Every error is one plain sentence on stderr (user input is never read as markup), and the
exit code says what kind it was (:class:`Exit`): 0 done, 1 refused by the platform,
2 a usage or input error, 3 a service that cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from enum import IntEnum
from typing import Annotated, Any, NoReturn, TypeVar

import aiormq
import typer
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bus.errors import (
    AuthUnavailable,
    BrokerUnavailable,
    BusError,
    CredentialsRefused,
    PublishRefused,
    RequestRefused,
    RpcTimeout,
    Unroutable,
)
from idlecloud.dev.services import DevServiceError
from schemas.base import NamespaceName

__all__ = [
    "Exit",
    "JsonOption",
    "NamespaceOption",
    "OptionalNamespaceOption",
    "UrlOption",
    "console",
    "describe",
    "fail",
    "print_json",
    "run_async",
    "table",
]

T = TypeVar("T")

#: Output never reads text as markup: names, reasons and values come from users.
console = Console(markup=False)
_errors = Console(stderr=True, markup=False)

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


def _namespace(value: str | None) -> str | None:
    """A namespace as the wire takes it, checked before anything is sent."""
    if value is not None:
        try:
            _NAMESPACE.validate_python(value)
        except ValidationError as error:
            problem = error.errors()[0]
            raise typer.BadParameter(f"{value!r}: {problem['msg']}") from None
    return value


_NAMESPACE: TypeAdapter[str] = TypeAdapter(NamespaceName)
NamespaceOption = Annotated[
    str,
    typer.Option("--namespace", "-n", envvar="IDLECLOUD_NAMESPACE", help="Your namespace.",
                 callback=_namespace),
]  # fmt: skip
OptionalNamespaceOption = Annotated[
    str | None,
    typer.Option("--namespace", "-n", envvar="IDLECLOUD_NAMESPACE", callback=_namespace,
                 help="Your namespace's; without it, everyone's (admin)."),
]  # fmt: skip


class Exit(IntEnum):
    """What a `bus` command's exit code says."""

    OK = 0
    REFUSED = 1  # the platform (or the broker) said no
    USAGE = 2  # a bad option, name, number or file
    UNREACHABLE = 3  # the broker, the auth service or a control-plane service did not answer


def fail(message: str, code: Exit = Exit.USAGE) -> NoReturn:
    """Print ``bus: <message>`` on stderr (as plain text) and exit with ``code``."""
    _errors.print(Text.assemble(("bus: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def describe(error: ValidationError) -> str:
    """A validation error as sentences: each field, the value given, and the rule."""
    problems = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "the input"
        value = problem.get("input")
        shown = repr(value) if isinstance(value, str | int | float) else "that value"
        problems.append(f"{field} = {shown[:80]}: {problem['msg']}")
    return "; ".join(problems)


def table(*columns: str) -> Table:
    """A plain table (no box lines): easy to read, to copy and to grep."""
    return Table(*columns, box=None, pad_edge=False, header_style="bold")


def print_json(value: Any) -> None:
    """Write ``value`` as JSON on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine, turning the library's errors into a one-line message and the
    :class:`Exit` code of their kind."""
    try:
        return asyncio.run(factory())
    except (BrokerUnavailable, AuthUnavailable, RpcTimeout, Unroutable, DevServiceError) as error:
        fail(str(error), Exit.UNREACHABLE)
    except (CredentialsRefused, PublishRefused, RequestRefused) as error:
        fail(str(error), Exit.REFUSED)
    except BusError as error:
        fail(str(error))
    except aiormq.exceptions.ChannelAccessRefused as error:
        fail(f"the broker refused: {error.args[0] if error.args else error} "
             "(your credentials do not allow this)", Exit.REFUSED)  # fmt: skip
    except aiormq.exceptions.ProbableAuthenticationError:
        fail("the broker refused the credentials (a wrong password, or an expired token)",
             Exit.REFUSED)  # fmt: skip
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
