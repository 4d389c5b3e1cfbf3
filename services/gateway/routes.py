"""The gateway's route table: every operation once, with what it answers.

The gateway registers its handlers from :data:`ROUTES` and :mod:`.openapi` writes the
OpenAPI document from it, so the server and its description cannot drift apart. Each
operation lists only the answers it can give: the success and the errors its path, its
body and its handler can produce (:data:`CALLER_ERRORS` for any authenticated call,
:data:`NAMED_ERRORS` where the path names a namespace, app or PC).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.jobs import JOB_ID_PATTERN

__all__ = [
    "CALLER_ERRORS",
    "NAMED_ERRORS",
    "ROUTES",
    "Answer",
    "Operation",
    "public_operations",
    "server_path",
]


@dataclass(frozen=True, slots=True)
class Answer:
    """One status an operation answers with, and the schema of its JSON body (a component's
    name; ``[Name]`` for an array of them; ``None`` for an event stream) in ``media``."""

    status: int
    description: str
    schema: str | None = "Error"
    media: str = "application/json"


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path: the gateway's handler for it and what it answers."""

    method: str
    path: str
    handler: str
    summary: str
    answers: tuple[Answer, ...]
    body: str | None = None  # the request body's component, if it takes one
    public: bool = False  # needs no credential
    query: tuple[str, ...] = ()  # the query parameters it takes (all optional)


#: Any authenticated call: a missing, forged, expired or revoked key.
CALLER_ERRORS = (Answer(401, "no credential, or one that is forged, expired or revoked"),)
#: A path that names a namespace, app or PC: not a DNS label, not the caller's namespace
#: (or a change from the page without its header), or a namespace without a quota.
NAMED_ERRORS = (
    Answer(403, "not your namespace, or a change from the page without its header"),
    Answer(404, "no such namespace, app or PC (names are DNS labels)"),
)
_AWAY = Answer(503, "the control plane did not answer in time")
_INVALID = Answer(422, "the body is not valid: `error` says why, `fields` which")
_ACCEPTED = Answer(200, "admitted", "Accepted")
_NS = "/v1/namespaces/{namespace}"
_JOB = f"{_NS}/jobs/{{job}}"

ROUTES: tuple[Operation, ...] = (
    Operation("GET", "/openapi.json", "_openapi", "This document",
              (Answer(200, "the OpenAPI document", "Document"),), public=True),
    Operation("GET", f"{_NS}/deployments", "_list", "Your apps",
              (Answer(200, "every app of the namespace", "[AppView]"), *CALLER_ERRORS,
               *NAMED_ERRORS, _AWAY)),
    Operation("POST", f"{_NS}/deployments", "_deploy", "Deploy an app",
              (Answer(201, "admitted", "Accepted"), *CALLER_ERRORS, *NAMED_ERRORS,
               Answer(409, "refused: the namespace's quota would be exceeded"), _INVALID, _AWAY),
              body="DeploymentBody"),
    Operation("GET", f"{_NS}/deployments/{{app}}", "_show", "One app",
              (Answer(200, "the app", "AppView"), *CALLER_ERRORS, *NAMED_ERRORS, _AWAY)),
    Operation("PATCH", f"{_NS}/deployments/{{app}}", "_scale", "Scale an app",
              (_ACCEPTED, *CALLER_ERRORS, *NAMED_ERRORS,
               Answer(409, "refused: the namespace's quota would be exceeded"), _INVALID, _AWAY),
              body="ScaleBody"),
    Operation("DELETE", f"{_NS}/deployments/{{app}}", "_delete", "Delete an app",
              (_ACCEPTED, *CALLER_ERRORS, *NAMED_ERRORS, _AWAY)),
    Operation("GET", f"{_NS}/quota", "_quota", "Your quota and its use",
              (Answer(200, "the quota, what the apps reserve and what runs", "Quota"),
               *CALLER_ERRORS, *NAMED_ERRORS, _AWAY)),
    Operation("GET", f"{_NS}/events", "_events",
              "Your namespace's events, live (server-sent events)",
              (Answer(200, "`event: <schema>` and `data: <JSON>` per event, until you hang up",
                      None), *CALLER_ERRORS, *NAMED_ERRORS, _AWAY)),
    Operation("GET", f"{_NS}/jobs", "_jobs", "Your jobs, and what their results weigh",
              (Answer(200, "every job of the namespace, newest first", "Jobs"), *CALLER_ERRORS,
               *NAMED_ERRORS, _AWAY)),
    Operation("POST", f"{_NS}/jobs", "_submit_job",
              "Submit a job of up to 10,000 calls (bigger ones: the SDK or `bus job submit`)",
              (Answer(201, "submitted: the job", "JobView"), *CALLER_ERRORS, *NAMED_ERRORS,
               Answer(409, "refused: the namespace keeps more results than its bound"),
               _INVALID, _AWAY), body="JobBody"),
    Operation("GET", _JOB, "_show_job", "One job: its state, counts and rate",
              (Answer(200, "the job", "JobView"), *CALLER_ERRORS, *NAMED_ERRORS, _AWAY)),
    Operation("GET", f"{_JOB}/results", "_job_results",
              "A job's results stored now, once each, by input index (JSON lines)",
              (Answer(200, "one JobResult a line", "JobResult", "application/x-ndjson"),
               *CALLER_ERRORS, *NAMED_ERRORS,
               Answer(410, "the job expired: its results are deleted"), _AWAY)),
    Operation("POST", f"{_JOB}/cancel", "_cancel_job",
              "Cancel a job: no replica starts another of its calls",
              (_ACCEPTED, *CALLER_ERRORS, *NAMED_ERRORS,
               Answer(409, "refused: the job is done or expired"), _AWAY)),
    Operation("DELETE", _JOB, "_delete_job", "Delete a job and its stored results",
              (_ACCEPTED, *CALLER_ERRORS, *NAMED_ERRORS, _AWAY)),
    Operation("GET", f"{_NS}/logs", "_logs",
              "What the namespace's replicas printed (the last lines kept since a time)",
              (Answer(200, "the lines, oldest first", "[LogEntry]"), *CALLER_ERRORS,
               *NAMED_ERRORS, Answer(422, "a query parameter is not valid"), _AWAY),
              query=("app", "replica", "since", "tail")),
    Operation("GET", f"{_NS}/history", "_history",
              "The jobs that ended since a time: who ran what, when, where and at what cost",
              (Answer(200, "the jobs, newest first", "Jobs"), *CALLER_ERRORS, *NAMED_ERRORS,
               Answer(422, "a query parameter is not valid"), _AWAY),
              query=("since",)),
    Operation("GET", f"{_NS}/usage", "_usage",
              "CPU seconds the namespace reserved and used since a time, by app or day "
              "(by PC: admins)",
              (Answer(200, "the rows, biggest use first (by day: in order)", "Usage"),
               *CALLER_ERRORS, *NAMED_ERRORS, Answer(422, "a query parameter is not valid"),
               Answer(503, "the figures cannot be read now (InfluxDB), or no answer")),
              query=("since", "by")),
    Operation("GET", "/v1/pcs", "_nodes", "The PCs",
              (Answer(200, "every PC", "[NodeView]"), *CALLER_ERRORS, _AWAY)),
    Operation("GET", "/v1/pcs/events", "_node_events", "PCs' presence and cordons, live (SSE)",
              (Answer(200, "`event: <schema>` and `data: <JSON>` per event, until you hang up",
                      None), *CALLER_ERRORS, _AWAY)),
    Operation("POST", "/v1/pcs/{node}/{action}", "_cordon",
              "Cordon, uncordon or drain a PC (admin)",
              (_ACCEPTED, *CALLER_ERRORS,
               Answer(403, "only an admin, or a change from the page without its header"),
               Answer(404, "no such action, or a PC name that is not a DNS label"), _AWAY)),
    Operation("POST", "/v1/session", "_log_in",
              "Log the page in with an API key (sets an HttpOnly cookie)",
              (Answer(200, "who you are", "Session"), *CALLER_ERRORS,
               Answer(403, "a PC's key cannot log in"),
               Answer(422, "no API key in the body")),
              body="SessionBody", public=True),
    Operation("GET", "/v1/session", "_who", "Who is logged in",
              (Answer(200, "who you are", "Session"), *CALLER_ERRORS)),
    Operation("DELETE", "/v1/session", "_log_out", "Log out (clears the cookie)",
              (Answer(200, "logged out", "LoggedOut"),), public=True),
)  # fmt: skip


def public_operations() -> frozenset[tuple[str, str]]:
    """(method, path) of the operations that need no credential."""
    return frozenset((op.method, op.path) for op in ROUTES if op.public)


def server_path(path: str) -> str:
    """A path as the server matches it: a job's id must look like one, so ``/jobs/cancel``
    is no job's path (404), not the cancel of a job named ``""``."""
    return path.replace("{job}", "{job:" + JOB_ID_PATTERN.strip("^$") + "}")
