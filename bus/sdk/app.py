"""An application's tasks: ``@app.task`` turns a function into a stateless service.

::

    app = App("alice", "vector")

    @app.task
    def add(x: float, y: float) -> float:
        return x + y

    add(1, 2)                 # still a plain function
    add.delay(1, 2).get()     # runs on a worker: `bus worker example:app`

Async functions run on the worker's event loop. Sync functions run in the worker's process
pool by default (CPU-bound work must not stall the connection's heartbeats); a trivial sync
function may ask for ``executor="inline"`` to run on the loop itself.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    cast,
    overload,
)

from pydantic import TypeAdapter, ValidationError

from schemas.base import AppId, NamespaceName

if TYPE_CHECKING:
    from bus.sdk.sync import SyncClient, SyncResult

__all__ = ["App", "Executor", "Task"]

P = ParamSpec("P")
R = TypeVar("R")
Executor = Literal["inline", "thread", "process"]

_NAMESPACE = TypeAdapter(NamespaceName)
_APP = TypeAdapter(AppId)


def _validated(adapter: TypeAdapter[str], value: str, what: str, variable: str) -> str:
    try:
        return adapter.validate_python(value)
    except ValidationError:
        raise ValueError(
            f"{what} {value!r} is not a DNS label (lower-case letters, digits, '-'); "
            f"set it in App(...) or {variable}"
        ) from None


def _takes_context(function: Callable[..., Any]) -> bool:
    """Whether ``function`` takes a first positional argument (the TaskContext)."""
    parameters = list(inspect.signature(function).parameters.values())
    return bool(parameters) and parameters[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )  # fmt: skip


class _Decorator(Protocol):
    def __call__(self, function: Callable[P, R], /) -> Task[P, R]: ...


@dataclass(frozen=True, eq=False)
class Task(Generic[P, R]):
    """A function served by workers, still callable locally."""

    app: App
    name: str
    function: Callable[P, R]
    executor: Executor
    retries: int = 0
    timeout_s: float | None = None
    #: Set: its function takes a :class:`bus.sdk.checkpoints.TaskContext` first, and a
    #: checkpoint is due this often (seconds).
    checkpoint_s: float | None = None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.function(*args, **kwargs)

    @functools.cached_property
    def is_async(self) -> bool:
        """True for ``async def`` tasks."""
        return inspect.iscoroutinefunction(self.function)

    def delay(self, *args: Any, **kwargs: Any) -> SyncResult:
        """Submit one call from plain (non-async) code; ``.get()`` waits for its result."""
        return self.app.sync_client().submit(self, args, kwargs)

    def map(self, inputs: Iterable[Any], *, batch_size: int | None = None) -> Iterator[Any]:
        """Run over many inputs from plain code, yielding results in input order.

        Each input is one argument, or a tuple of positional arguments; ``batch_size``
        as :meth:`bus.sdk.client.TaskClient.map` takes it (default: sized by run times).
        """
        return self.app.sync_client().map(self, inputs, batch_size=batch_size)


class App:
    """The tasks of one application (namespace + app id) and how workers serve them."""

    def __init__(
        self,
        namespace: str | None = None,
        app: str | None = None,
        *,
        prefetch: int | None = None,
        url: str | None = None,
    ) -> None:
        """Create an app.

        Args:
            namespace: the owner's namespace; default ``IDLECLOUD_NAMESPACE``.
            app: the application id; default ``IDLECLOUD_APP``.
            prefetch: tasks a worker holds at once; small by default so a paused PC holds
                little work (its concurrency). Raise it for many tiny tasks.
            url: the broker URL for clients of this app; default ``IDLECLOUD_URL``.

        Raises:
            ValueError: the namespace or app id is missing or not a DNS label.
        """
        self.namespace = _validated(
            _NAMESPACE, namespace or os.environ.get("IDLECLOUD_NAMESPACE", ""),
            "namespace", "IDLECLOUD_NAMESPACE",
        )  # fmt: skip
        self.app = _validated(
            _APP, app or os.environ.get("IDLECLOUD_APP", ""), "app id", "IDLECLOUD_APP"
        )
        if prefetch is not None and not 1 <= prefetch <= 10_000:
            raise ValueError("prefetch must be between 1 and 10000")
        self.prefetch = prefetch
        self.url = url
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._sync_client: SyncClient | None = None

    @overload
    def task(self, function: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        function: None = None,
        /,
        *,
        name: str | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
        executor: Executor | None = None,
        checkpoint_s: float | None = None,
    ) -> _Decorator: ...

    def task(
        self,
        function: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
        executor: Executor | None = None,
        checkpoint_s: float | None = None,
    ) -> Task[P, R] | _Decorator:
        """Register a function as a task of this app.

        Args:
            function: the function (when used as a bare ``@app.task``).
            name: the task's name; default the function's name.
            retries: how many more times a failing call is tried before it is reported
                failed and dead-lettered with its traceback.
            timeout_s: a call running longer fails (and is retried).
            executor: ``inline`` (on the event loop: async functions, and trivial sync
                ones), ``thread``, or ``process`` (default for sync functions).
            checkpoint_s: the call saves its progress this often: its function takes a
                :class:`bus.sdk.checkpoints.TaskContext` as its first argument (see
                :mod:`bus.sdk.checkpoints`), which workers pass and callers leave out.

        Raises:
            ValueError: a task of that name exists, or an option is out of range.
        """

        def register(target: Callable[P, R]) -> Task[P, R]:
            task_name = name or target.__name__
            if task_name in self.tasks:
                raise ValueError(f"app {self.app} already has a task named {task_name!r}")
            if retries < 0 or (timeout_s is not None and timeout_s <= 0):
                raise ValueError("retries must be >= 0 and timeout_s > 0")
            if checkpoint_s is not None and not (checkpoint_s > 0 and _takes_context(target)):
                raise ValueError(
                    f"task {task_name!r}: checkpoint_s must be > 0, and its function must "
                    "take the TaskContext as its first argument"
                )
            chosen: Executor = executor or (
                "inline" if inspect.iscoroutinefunction(target) else "process"
            )
            if inspect.iscoroutinefunction(target) and chosen != "inline":
                raise ValueError(f"async task {task_name!r} can only run inline")
            created: Task[P, R] = Task(
                self, task_name, target, chosen, retries, timeout_s, checkpoint_s
            )
            self.tasks[task_name] = created
            return created

        return cast(_Decorator, register) if function is None else register(function)

    def sync_client(self) -> SyncClient:
        """The client ``Task.delay`` and ``Task.map`` use, connected on first use."""
        from bus.sdk.sync import SyncClient

        if self._sync_client is None:
            self._sync_client = SyncClient(self)
        return self._sync_client
