"""The desired state: what the journal says should be, rebuilt by applying its entries
(deployments, quotas, cordons, leaders' epochs, API keys and their revocations, jobs).

Pure: no I/O. Every control-plane service keeps one, fed by its journal reader. An entry
whose request id was applied before (a publish retried across a reconnect can land twice)
changes nothing. Each applied request id is kept with a digest of its request, so the
same id sent again with other content can be told from a redelivery (and refused); the
newest :data:`APPLIED_KEPT` ids are kept (a redelivery comes within minutes, not after
ten thousand other requests).

The journal's size is bounded, so its oldest entries are dropped in time. A
``JournalSnapshot`` holds the whole state as of an offset (``through``); a reader that
meets one takes it as its state and applies again the entries it read after ``through``
(kept since the previous snapshot, at most :data:`RECENT_KEPT`). Entries before the
first snapshot a reader meets may be a cut-off tail; they are applied and then
replaced. See :func:`snapshot` for the bound that makes this safe.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from schemas import (
    ZERO,
    Amount,
    CordonRequest,
    DeleteRequest,
    DeployRequest,
    JobDelete,
    JobEnded,
    JobForgotten,
    JobSeal,
    JobSubmit,
    JobView,
    JournalSnapshot,
    KeyIssued,
    KeyView,
    LeaderTookOver,
    Message,
    QuotaSet,
    ScaleRequest,
    SnapshotApp,
    SnapshotJob,
    TokenRevoke,
)
from schemas.jobs import JOB_COUNTS
from schemas.journal import Entry

__all__ = [
    "APPLIED_KEPT",
    "RECENT_KEPT",
    "SNAPSHOT_EVERY",
    "AppKey",
    "DesiredState",
    "JobKey",
    "Spec",
    "digest",
]

#: The quota manager's leader writes a snapshot once this many entries came since the last.
SNAPSHOT_EVERY = 256

#: How many of the newest applied request ids are remembered (with their digests).
APPLIED_KEPT = 10_000
#: How many entries since the last snapshot a reader keeps to apply again after it.
RECENT_KEPT = 4096

AppKey = tuple[str, str]  # (namespace, app)
JobKey = tuple[str, str]  # (namespace, job id)


@dataclass(frozen=True, slots=True)
class Spec:
    """One application as it should run: its request, replica count and the entry's offset.

    ``generation`` is the offset of the deploy that defined it: a redeploy changes it, and
    replicas of an older generation are replaced.
    """

    request: DeployRequest
    replicas: int
    generation: int

    @property
    def key(self) -> AppKey:
        """(namespace, app)."""
        return (self.request.namespace, self.request.app)

    @property
    def reservation(self) -> Amount:
        """What one replica reserves."""
        return Amount(self.request.cpu_millicores, self.request.memory_mib)


def digest(message: Message) -> str:
    """What a request says, in a few bytes: its schema and every field."""
    content = f"{message.schema_name}:{message.model_dump_json()}"
    return hashlib.sha256(content.encode()).hexdigest()[:32]


@dataclass
class DesiredState:
    """Deployments, quotas, cordons, leaders, keys and jobs as of the last applied entry."""

    deployments: dict[AppKey, Spec] = field(default_factory=dict)
    quotas: dict[str, Amount] = field(default_factory=dict)
    cordons: dict[str, Literal["cordon", "drain"]] = field(default_factory=dict)  # by node
    leaders: dict[str, int] = field(default_factory=dict)  # service -> its epoch
    keys: dict[str, KeyView] = field(default_factory=dict)  # API keys issued, by key id
    revoked: dict[str, int] = field(default_factory=dict)  # key id -> offset of its revocation
    jobs: dict[JobKey, JobView] = field(default_factory=dict)
    applied: dict[str, str] = field(default_factory=dict)  # request id -> its digest
    offset: int = -1  # the last entry applied
    snapshot_offset: int = -1  # where the last snapshot read was
    _recent: deque[Entry] = field(default_factory=lambda: deque(maxlen=RECENT_KEPT))

    def apply(self, entry: Entry) -> None:
        """Apply one journal entry (a repeated request id is ignored; a snapshot replaces
        the state, then the entries read after what it holds are applied again)."""
        if isinstance(entry.message, JournalSnapshot):
            self._restore(entry.message, entry.offset)
            return
        self._recent.append(entry)
        self._apply(entry)

    def _apply(self, entry: Entry) -> None:
        self.offset = max(self.offset, entry.offset)
        message = entry.message
        request_id = getattr(message, "request_id", None)
        if request_id is not None:
            if request_id in self.applied:
                return
            self.applied[request_id] = digest(message)
            if len(self.applied) > APPLIED_KEPT:
                del self.applied[next(iter(self.applied))]  # the oldest
        match message:
            case DeployRequest():
                key = (message.namespace, message.app)
                self.deployments[key] = Spec(message, message.replicas, entry.offset)
            case ScaleRequest():
                key = (message.namespace, message.app)
                if key in self.deployments:
                    current = self.deployments[key]
                    self.deployments[key] = Spec(
                        current.request, message.replicas, current.generation
                    )
            case DeleteRequest():
                self.deployments.pop((message.namespace, message.app), None)
            case QuotaSet():
                self.quotas[message.namespace] = Amount(message.cpu_millicores, message.memory_mib)
            case CordonRequest():
                if message.action == "uncordon":
                    self.cordons.pop(message.node, None)
                else:
                    self.cordons[message.node] = message.action
            case LeaderTookOver():
                self.leaders[message.service] = entry.offset
            case KeyIssued():
                self.keys[message.key.key_id] = message.key
            case TokenRevoke():
                self.revoked.setdefault(message.key_id, entry.offset)
            case JobSubmit() | JobSeal() | JobDelete() | JobEnded() | JobForgotten():
                self._apply_job(message)

    def _apply_job(
        self, message: JobSubmit | JobSeal | JobDelete | JobEnded | JobForgotten
    ) -> None:
        """A job opens, is sealed, ends (done, cancelled, expired: the counts as of then),
        is deleted (its record stays, for the history) or forgotten. A job ends once: a
        later end changes only an expiry."""
        key = (message.namespace, message.job_id)
        job = self.jobs.get(key)
        match message:
            case JobSubmit() if job is None:
                self.jobs[key] = JobView(
                    job_id=message.job_id, name=message.name, app=message.app,
                    task=message.task, total=message.total, submitted_at=message.submitted_at,
                    state="submitting" if message.total is None else "running",
                    submitter=message.submitter,
                )  # fmt: skip
            case JobSeal() if job is not None and job.state == "submitting":
                self.jobs[key] = job.model_copy(update={"state": "running", "total": message.total})
            case JobDelete() if job is not None:  # its history stays
                self.jobs[key] = job.model_copy(update={"state": "deleted", "stored_bytes": 0})
            case JobForgotten():
                self.jobs.pop(key, None)
            case JobEnded() if job is not None and (
                message.state == "expired" or job.ended_at is None
            ):
                counts = message.model_dump(include={*JOB_COUNTS, "nodes"})
                self.jobs[key] = job.model_copy(update={
                    **counts, "state": message.state, "ended_at": job.ended_at or message.at,
                })  # fmt: skip

    def snapshot(self) -> JournalSnapshot:
        """The whole state as of the last entry applied.

        A snapshot is safe to rely on once the journal's size bound can only drop entries
        it holds: with snapshots every ``K`` entries of at most ``E`` bytes and a snapshot
        of at most ``S`` bytes, the stream must keep ``K * E + S`` bytes beyond a dropped
        segment (see ``bus.topology.JOURNAL``).
        """
        return JournalSnapshot(
            through=max(0, self.offset),
            apps=tuple(
                SnapshotApp(
                    request=spec.request, replicas=spec.replicas, generation=spec.generation
                )
                for spec in self.deployments.values()
            ),
            quotas={namespace: quota.wire() for namespace, quota in self.quotas.items()},
            cordons=dict(self.cordons),
            leaders=dict(self.leaders),
            keys=tuple(self.keys.values()),
            revoked=dict(self.revoked),
            jobs=tuple(SnapshotJob(namespace=ns, job=job) for (ns, _), job in self.jobs.items()),
            applied=dict(self.applied),
        )

    def _restore(self, snapshot: JournalSnapshot, offset: int) -> None:
        """Take ``snapshot`` as the state, then apply again what was read after it holds."""
        self.deployments = {
            (app.request.namespace, app.request.app): Spec(
                app.request, app.replicas, app.generation
            )
            for app in snapshot.apps
        }
        self.quotas = {namespace: Amount.of(quota) for namespace, quota in snapshot.quotas.items()}
        self.cordons = dict(snapshot.cordons)
        self.leaders = dict(snapshot.leaders)
        self.keys = {key.key_id: key for key in snapshot.keys}
        self.revoked = dict(snapshot.revoked)
        self.jobs = {(item.namespace, item.job.job_id): item.job for item in snapshot.jobs}
        self.applied = dict(snapshot.applied)
        self.offset = snapshot.through
        self.snapshot_offset = offset
        after = [entry for entry in self._recent if entry.offset > snapshot.through]
        self._recent.clear()
        for entry in after:
            self._recent.append(entry)
            self._apply(entry)
        self.offset = max(self.offset, offset)

    def reserved(self, namespace: str, *, without: str | None = None) -> Amount:
        """What the namespace's deployments reserve in all, optionally leaving one app out."""
        reserved = ZERO
        for (owner, app), spec in self.deployments.items():
            if owner == namespace and app != without:
                reserved += spec.reservation * spec.replicas
        return reserved
