"""`bus job submit|status|results|wait|cancel|list|delete`: submit, walk away, attach.

A job's calls and results stay on the broker, so the submitting process may exit at once
and any machine with the namespace's key attaches by the job's id.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import typer

from bus.defaults import BROKER_URL
from bus.sdk.jobs import ENDED, Job, checked_job_id, result_document
from idlecloud.cli._common import (
    Exit,
    JsonOption,
    NamespaceOption,
    UrlOption,
    console,
    fail,
    print_json,
    run_async,
    table,
)
from idlecloud.cli.logs import since_time
from idlecloud.cli.session import ask, connect
from schemas import JobsQuery, JobsReply, JobView, Owner

__all__ = ["job_app"]

job_app = typer.Typer(
    help="Jobs: submit work and walk away; attach from anywhere by the job's id.",
    no_args_is_help=True,
)

JobArgument = Annotated[str, typer.Argument(help="The job's id (from `bus job submit`).")]
_MIB = 1024**2


def _load(target: str, what: str) -> Any:
    from bus.sdk.pool import load_target

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`, find modules where we stand
    try:
        return load_target(target)
    except (ValueError, ImportError, AttributeError) as error:
        fail(f"cannot load {target!r}: {error}. Give {what} as MODULE:ATTRIBUTE")


def _read_jsonl(path: Path) -> list[tuple[Any, ...]]:
    """Every line's JSON argument list; refuse the whole file at its first bad line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")
    inputs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            arguments = json.loads(line)
        except json.JSONDecodeError as error:
            fail(f"{path}, line {number}: not JSON ({error.msg}); give one JSON list a line")
        if not isinstance(arguments, list):
            fail(f"{path}, line {number}: a {type(arguments).__name__}, not a JSON list of "
                 "the call's arguments (write [42] for one argument 42)")  # fmt: skip
        inputs.append(tuple(arguments))
    return inputs


def _generated(target: str) -> Iterable[Any]:
    source = _load(target, "--inputs-from")
    produced = source() if callable(source) else source
    if not isinstance(produced, Iterable):
        fail(f"{target} gave a {type(produced).__name__}, not an iterable of inputs")
    return produced


@job_app.command("submit")
def submit(
    target: Annotated[str, typer.Argument(help="The task, as MODULE:TASK (a function of an App).")],
    inputs: Annotated[
        Path | None, typer.Option(help="A JSON-lines file: one list of arguments a call.")
    ] = None,
    inputs_from: Annotated[
        str | None,
        typer.Option(help="MODULE:ATTRIBUTE: an iterable (or a function returning one) of inputs."),
    ] = None,
    name: Annotated[str, typer.Option(help="A name to list the job by.")] = "",
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Calls a message.")] = 1,
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """Submit a job and exit: its calls and results stay on the broker."""
    from bus.sdk import Task, TaskClient

    if (inputs is None) == (inputs_from is None):
        fail("give the calls' inputs with either --inputs FILE.jsonl or --inputs-from MODULE:GEN")
    task = _load(target, "the task")
    if not isinstance(task, Task):
        fail(f"{target} is a {type(task).__name__}, not a task (decorate it with @app.task)")
    calls: Iterable[Any] = (
        _read_jsonl(inputs) if inputs is not None else _generated(str(inputs_from))
    )

    async def go() -> Job:
        async with connect(url, "job submit") as bus, TaskClient(bus, task.app) as client:
            return await client.submit_job(task, calls, name=name, batch_size=batch_size)

    job = run_async(go)
    view = run_async(lambda: _status(url, job.namespace, job.job_id))
    if as_json:
        print_json(view.model_dump(mode="json") | {"namespace": job.namespace})
        return
    console.print(f"{job.job_id}: {view.total} calls of {task.app.app}.{task.name} submitted "
                  f"in {job.namespace}; follow it with `bus job status {job.job_id} "
                  f"-n {job.namespace} --watch`")  # fmt: skip


async def _status(url: str, namespace: str, job_id: str) -> JobView:
    async with connect(url, "job status") as bus:
        return await Job.attach(bus, namespace, job_id).status()


def _checked(job_id: str) -> str:
    try:
        return checked_job_id(job_id)
    except ValueError as error:
        fail(str(error))


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", _MIB), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 120:
        return f"about {seconds:.0f} s"
    return f"about {seconds / 60:.0f} min" if seconds < 7200 else f"about {seconds / 3600:.1f} h"


def _counts(view: JobView) -> str:
    pending = "?" if view.total is None else str(view.total - view.done - view.failed)
    return f"{view.done} done, {view.failed} failed, {pending} pending"


@job_app.command("status")
def status(
    job_id: JobArgument,
    namespace: NamespaceOption = "default",
    watch: Annotated[bool, typer.Option(help="Show a progress bar until the job ends.")] = False,
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """A job's state: done, failed, pending, re-executions, rate, ETA."""
    _checked(job_id)
    if watch:
        view = run_async(lambda: _watch(url, namespace, job_id))
    else:
        view = run_async(lambda: _status(url, namespace, job_id))
    if as_json:
        print_json(view.model_dump(mode="json"))
        return
    console.print(
        f"{view.job_id} ({view.name or 'no name'}): {view.state}, "
        f"{view.app}.{view.task}, submitted {view.submitted_at:%Y-%m-%d %H:%M} UTC"
    )
    console.print(
        f"  {_counts(view)} of {view.total if view.total is not None else '?'}; "
        f"{view.duplicates} ran twice"
    )
    pace = f"  {view.rate_per_s:.1f} results/s"
    if view.rate_per_s > 0 and view.total is not None and view.state == "running":
        pace += f", {_duration((view.total - view.done - view.failed) / view.rate_per_s)} to go"
    kept = f"kept until {view.expires_at:%Y-%m-%d %H:%M} UTC" if view.expires_at else "kept"
    console.print(f"{pace}; {_size(view.stored_bytes)} of results {kept}")  # fmt: skip


async def _watch(url: str, namespace: str, job_id: str, *, show: bool = True) -> JobView:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn  # a worker: none

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[rate]}/s"),
        TimeRemainingColumn(),
    )
    async with connect(url, "job watch") as bus:
        job = Job.attach(bus, namespace, job_id)
        with Progress(*columns, console=console, disable=not show) as bar:
            shown = bar.add_task(job_id, total=None, rate=0)
            while True:
                view = await job.status()
                bar.update(shown, total=view.total, completed=view.done + view.failed,
                           rate=f"{view.rate_per_s:.1f}")  # fmt: skip
                if view.state in ENDED:
                    return view
                await asyncio.sleep(1.0)


async def _write_results(
    url: str, namespace: str, job_id: str, out: IO[str], order: Literal["completed", "input"],
    wait: bool,
) -> int:  # fmt: skip
    written = 0
    async with connect(url, "job results") as bus:
        async for index, outcome in Job.attach(bus, namespace, job_id).results(
            order=order, wait=wait
        ):
            out.write(json.dumps(result_document(index, outcome), separators=(",", ":")) + "\n")
            written += 1
    return written


@job_app.command("results")
def results(
    job_id: JobArgument,
    namespace: NamespaceOption = "default",
    out: Annotated[
        Path | None, typer.Option(help="Write the JSON lines here, not to stdout.")
    ] = None,
    order: Annotated[
        str, typer.Option(help="completed (as stored) or input (by index).")
    ] = "completed",
    wait: Annotated[
        bool,
        typer.Option(help="Wait for a running job's every result (--no-wait: what is stored)."),
    ] = True,
    url: UrlOption = BROKER_URL,
) -> None:
    """Every result of a job, once each, as JSON lines: index, ok, value or error."""
    _checked(job_id)
    if order not in ("completed", "input"):
        fail(f"--order {order!r}: give completed or input")
    ordering: Literal["completed", "input"] = "input" if order == "input" else "completed"
    sink = sys.stdout if out is None else _open(out)
    try:
        written = run_async(lambda: _write_results(url, namespace, job_id, sink, ordering, wait))
    finally:
        if out is not None:
            sink.close()
    if out is not None:
        console.print(f"{written} results written to {out}")


def _open(path: Path) -> IO[str]:
    try:
        return path.open("w")
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror}")


@job_app.command("wait")
def wait_for(
    job_id: JobArgument,
    namespace: NamespaceOption = "default",
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """Wait until a job ends; exit 0 if every call succeeded, 1 if not."""
    _checked(job_id)
    view = run_async(lambda: _watch(url, namespace, job_id, show=sys.stderr.isatty()))
    if as_json:
        print_json(view.model_dump(mode="json"))
    else:
        console.print(f"{job_id}: {view.state}; {_counts(view)}")
    if view.state != "done" or view.failed:
        raise typer.Exit(Exit.REFUSED)


def _request(verb: Literal["cancel", "delete"], url: str, namespace: str, job_id: str) -> None:
    async def go() -> None:
        async with connect(url, f"job {verb}") as bus:
            job = Job.attach(bus, namespace, job_id)
            await (job.cancel() if verb == "cancel" else job.delete())

    run_async(go)


def _request_command(verb: Literal["cancel", "delete"], done: str) -> Callable[..., None]:
    def command(
        job_id: JobArgument, namespace: NamespaceOption = "default", url: UrlOption = BROKER_URL
    ) -> None:
        _request(verb, url, namespace, _checked(job_id))
        console.print(f"{job_id}: {done}")

    return command


job_app.command("cancel", help="Cancel a job: no replica starts another of its calls; "
                "results so far stay.")(_request_command("cancel", "cancelled"))  # fmt: skip
job_app.command("delete", help="Delete a job's stored results (its record stays in the "
                "history).")(_request_command("delete", "deleted"))  # fmt: skip


@job_app.command("history")
def history(
    namespace: NamespaceOption = "default",
    since: Annotated[str, typer.Option(help="Ended within: 30s, 10m, 2h, 30d.")] = "30d",
    url: UrlOption = BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """Jobs that ended (done, cancelled, expired or deleted): who, what, when, where, the
    calls that ran twice or were handed out again (their worker went away: evicted by a
    person, a PC lost), and the CPU seconds the calls took."""
    query = JobsQuery(namespace=namespace, ended_since=since_time(since))
    reply = ask(url, Owner.namespace(namespace), query, JobsReply)
    if as_json:
        print_json(reply.model_dump(mode="json"))
        return
    shown = table("job", "name", "app", "by", "state", "ended", "done", "failed", "ran twice",
                  "redelivered", "CPU-s", "PCs")  # fmt: skip
    for view in reply.jobs:
        ended = f"{view.ended_at:%Y-%m-%d %H:%M}" if view.ended_at else "—"
        shown.add_row(view.job_id, view.name, f"{view.app}.{view.task}", view.submitter,
                      view.state, ended, str(view.done), str(view.failed),
                      str(view.duplicates), str(view.redelivered), f"{view.cpu_s:.1f}",
                      ", ".join(view.nodes) or "—")  # fmt: skip
    console.print(shown)


@job_app.command("list")
def list_jobs(
    namespace: NamespaceOption = "default", url: UrlOption = BROKER_URL, as_json: JsonOption = False
) -> None:
    """Your namespace's jobs, newest first, and what their results weigh."""
    reply = ask(url, Owner.namespace(namespace), JobsQuery(namespace=namespace), JobsReply)
    if as_json:
        print_json(reply.model_dump(mode="json"))
        return
    shown = table("job", "name", "app", "state", "done", "failed", "total", "submitted")
    for view in reply.jobs:
        shown.add_row(view.job_id, view.name, f"{view.app}.{view.task}", view.state,
                      str(view.done), str(view.failed), str(view.total or "?"),
                      f"{view.submitted_at:%Y-%m-%d %H:%M}")  # fmt: skip
    console.print(shown)
    stored, limit = _size(reply.stored_bytes), _size(reply.stored_bytes_limit)
    days = reply.retention_s / 86_400
    console.print(f"{stored} of results stored ({limit} allowed); kept {days:g} days after a "
                  "job ends")  # fmt: skip
