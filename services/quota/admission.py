"""Admission: whether a request may change the desired state (pure: no I/O).

A namespace's deployments may reserve in all, replicas x (CPU, memory), no more than its
quota. A deploy or scale is admitted only if the total after the change stays within it;
the reason for a refusal gives the numbers. A namespace without a quota has none to
spend. Deletes and an admin's quota and cordon requests are always admitted (a delete
of an app that does not exist is refused, so a typo is not a silent success).

A request id is bound to its content: the same request again (a redelivery) is recalled
as admitted and not applied twice; the same id with other content is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import (
    Amount,
    CordonRequest,
    DeleteRequest,
    DeployRequest,
    Message,
    QuotaSet,
    ScaleRequest,
)
from services.state import DesiredState, digest

__all__ = ["Verdict", "admit", "recall"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Admitted, or refused with a reason a person can act on."""

    accepted: bool
    reason: str = ""


def recall(state: DesiredState, request: Message) -> Verdict | None:
    """The verdict on a request whose id was admitted before; None for a new id."""
    seen = state.applied.get(getattr(request, "request_id", ""))
    if seen is None:
        return None
    if seen == digest(request):
        return Verdict(True, "already admitted")
    return Verdict(
        False,
        f"request id {getattr(request, 'request_id', '')} was used before for another "
        "request; send each request with an id of its own",
    )


def admit(state: DesiredState, request: Message) -> Verdict:
    """Decide on one request against the desired state."""
    match request:
        case DeployRequest():
            size = Amount(request.cpu_millicores, request.memory_mib)
            return _within_quota(state, request.namespace, request.app, request.replicas, size)
        case ScaleRequest():
            spec = state.deployments.get((request.namespace, request.app))
            if spec is None:
                return Verdict(False, f"{request.namespace} has no app {request.app!r} to scale")
            return _within_quota(
                state, request.namespace, request.app, request.replicas, spec.reservation
            )
        case DeleteRequest():
            if (request.namespace, request.app) not in state.deployments:
                return Verdict(False, f"{request.namespace} has no app {request.app!r} to delete")
            return Verdict(True)
        case QuotaSet() | CordonRequest():
            return Verdict(True)
    return Verdict(False, f"{request.schema_name} is not a request the quota manager admits")


def _within_quota(
    state: DesiredState, namespace: str, app: str, replicas: int, size: Amount
) -> Verdict:
    quota = state.quotas.get(namespace)
    if quota is None:
        return Verdict(
            False,
            f"{namespace} has no quota; an admin sets one with "
            f"`bus quota set {namespace} --cpu-millicores N --memory-mib M`",
        )
    others = state.reserved(namespace, without=app)
    after = others + size * replicas
    if after.shortfall(quota) is not None:
        return Verdict(
            False,
            f"{namespace} would reserve {after} ({replicas} x {size.cpu_millicores}m/"
            f"{size.memory_mib} MiB for {app}, {others.cpu_millicores}m/{others.memory_mib} MiB "
            f"for its other apps); its quota is {quota}",
        )
    return Verdict(True)
