"""Jobs: a named, numbered set of calls to one app, kept on the broker after the
submitter has gone.

A user submits a job (``JobSubmit``, with an id she drew at random), publishes its calls,
and seals it with their number if she did not know it up front (``JobSeal``). She may
cancel or delete it; the platform records when it finished or expired. Everything here is
journaled, so the jobs service rebuilds every record after a restart; a namespace reads
its records through ``JobsQuery`` and never writes them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StringConstraints

from schemas.base import (
    AppId,
    Count,
    NamespaceMessage,
    NamespaceName,
    NodeName,
    PlatformMessage,
    Reason,
    RequestId,
    Timestamp,
    WireModel,
)
from schemas.resources import CpuSeconds

__all__ = [
    "JOB_COUNTS",
    "JOB_ID_PATTERN",
    "JobCancel",
    "JobDelete",
    "JobEnded",
    "JobForgotten",
    "JobId",
    "JobSeal",
    "JobState",
    "JobSubmit",
    "JobView",
    "JobsQuery",
    "JobsReply",
    "SnapshotJob",
]

#: ``j`` and 80 random bits in hex: a passive declare reveals a queue's counts to anyone
#: who knows its name, so a job's name must not be guessable.
JOB_ID_PATTERN = r"^j[0-9a-f]{20}$"
JobId = Annotated[
    str,
    StringConstraints(pattern=JOB_ID_PATTERN),
    Field(description="A job's id: j and 20 random hex digits."),
]
JobName = Annotated[str, StringConstraints(max_length=128)]
TaskName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
#: submitting: not sealed yet; running: sealed, results outstanding; done: every call
#: answered; cancelled: cut short by its owner; expired: its results are gone after the
#: retention period; deleted: its owner deleted it (only its history stays).
JobState = Literal["submitting", "running", "done", "cancelled", "expired", "deleted"]
#: Who submitted a job, as the broker named the sender (``user:alice:<key id>``).
Submitter = Annotated[str, StringConstraints(max_length=200)]
#: The PCs a job's results came from.
JobNodes = tuple[NodeName, ...]
#: How many calls a job may have.
TaskCount = Annotated[int, Field(ge=0, le=100_000_000)]


class _JobRequest(NamespaceMessage):
    request_id: RequestId
    job_id: JobId


class JobSubmit(_JobRequest):
    """Open a job: its results are kept from now on. ``total`` when known up front."""

    schema_name = "JobSubmit"

    app: AppId
    task: TaskName
    name: JobName = ""
    total: TaskCount | None = None
    submitted_at: Timestamp
    #: The sender's broker user name: the jobs service refuses a job whose submitter is
    #: not who the broker says sent it.
    submitter: Submitter


class JobSeal(_JobRequest):
    """Every call of the job is published: there are ``total`` of them."""

    schema_name = "JobSeal"

    total: TaskCount


class JobCancel(_JobRequest):
    """Cancel a job: no replica starts another of its calls; results so far are kept."""

    schema_name = "JobCancel"


class JobDelete(_JobRequest):
    """Delete a job's stored results; its record stays in the history."""

    schema_name = "JobDelete"


#: The counts a job's end records, as :class:`JobView` and :class:`JobEnded` name them.
JOB_COUNTS = ("done", "failed", "duplicates", "redelivered", "cpu_s", "stored_bytes")


class JobEnded(PlatformMessage):
    """The jobs service's record of a job's end: every call answered, cancelled by its
    owner, or its results expired. The counts, and the PCs its results came from, are as
    of then."""

    schema_name = "JobEnded"
    #: Version 1 had no ``cpu_s`` nor ``redelivered`` (read as 0).
    schema_version = 2
    older_versions = frozenset({1})

    namespace: NamespaceName
    job_id: JobId
    state: Literal["done", "cancelled", "expired"]
    done: Count
    failed: Count
    duplicates: Count
    stored_bytes: Count
    nodes: JobNodes = Field(default=(), max_length=10_000)
    at: Timestamp
    cpu_s: CpuSeconds = 0.0
    redelivered: Count = 0


class JobForgotten(PlatformMessage):
    """A job's record is dropped: it ended longer ago than the history is kept."""

    schema_name = "JobForgotten"

    namespace: NamespaceName
    job_id: JobId


class JobsQuery(NamespaceMessage):
    """Which jobs the namespace has (or one of them), with their progress."""

    schema_name = "JobsQuery"

    job_id: JobId | None = None
    #: Jobs that ended since then, deleted ones too (the history), instead of the jobs kept.
    ended_since: Timestamp | None = None


class JobView(WireModel):
    """One job as the platform sees it."""

    job_id: JobId
    name: JobName
    app: AppId
    task: TaskName
    state: JobState
    total: TaskCount | None
    done: Count = 0
    failed: Count = 0
    duplicates: Count = 0
    #: Calls handed to a worker again because the one that held them went away before
    #: answering (evicted by a person, a PC lost, a replica killed).
    redelivered: Count = 0
    #: CPU seconds its calls took, as their workers measured (each run counted).
    cpu_s: CpuSeconds = 0.0
    stored_bytes: Count = 0
    submitted_at: Timestamp
    submitter: Submitter = ""
    nodes: JobNodes = Field(default=(), max_length=10_000)
    ended_at: Timestamp | None = None
    #: When its results are deleted (a future time: not a :data:`Timestamp`).
    expires_at: AwareDatetime | None = None
    #: Results a second over the last minute (0 when none came).
    rate_per_s: Annotated[float, Field(ge=0, le=1e9)] = 0.0


class SnapshotJob(WireModel):
    """One job in a snapshot of the desired state."""

    namespace: NamespaceName
    job: JobView


class JobsReply(NamespaceMessage):
    """A namespace's jobs, and what their stored results weigh against its bound."""

    schema_name = "JobsReply"
    #: Version 1's jobs had no ``cpu_s`` nor ``redelivered`` (read as 0).
    schema_version = 2
    older_versions = frozenset({1})

    jobs: tuple[JobView, ...] = Field(default=(), max_length=10_000)
    stored_bytes: Count
    stored_bytes_limit: Count
    retention_s: Count
    reason: Reason = ""
    at: Timestamp
