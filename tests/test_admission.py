"""The desired state and admission, pure: journal entries in, verdicts out."""

from __future__ import annotations

from schemas import (
    Amount,
    CordonRequest,
    DeleteRequest,
    JournalSnapshot,
    Message,
    QuotaSet,
    ScaleRequest,
    TokenRevoke,
)
from schemas.journal import Entry
from services.quota.admission import Verdict, admit, recall
from services.state import DesiredState

from .examples import deploy


def state_of(*messages: Message) -> DesiredState:
    state = DesiredState()
    for offset, message in enumerate(messages):
        state.apply(Entry(offset, message))
    return state


def quota(namespace: str, cpu: int, memory: int, request_id: str = "req-quota-1") -> QuotaSet:
    return QuotaSet(
        request_id=request_id, namespace=namespace, cpu_millicores=cpu, memory_mib=memory
    )


def test_entries_build_deployments_quotas_and_cordons_and_a_repeat_changes_nothing() -> None:
    first = deploy("alice", "stereo", "req-a-000001")  # 15 x 1000m / 512 MiB
    state = state_of(
        quota("alice", 20_000, 65_536),
        first,
        ScaleRequest(request_id="req-a-000002", namespace="alice", app="stereo", replicas=4),
        first,  # the same request appended twice (a publish retried across a reconnect)
        CordonRequest(request_id="req-c-000001", node="edge", action="drain"),
    )
    spec = state.deployments[("alice", "stereo")]
    assert (spec.replicas, spec.generation) == (4, 1)
    assert state.quotas["alice"].cpu_millicores == 20_000
    assert state.cordons == {"edge": "drain"}
    assert state.reserved("alice") == Amount(4 * first.cpu_millicores, 4 * first.memory_mib)
    state.apply(Entry(9, CordonRequest(request_id="req-c-000002", node="edge", action="uncordon")))
    state.apply(
        Entry(10, DeleteRequest(request_id="req-d-000001", namespace="alice", app="stereo"))
    )
    assert state.cordons == {} and state.deployments == {} and state.offset == 10


def test_a_deploy_within_the_quota_is_admitted_and_one_beyond_it_refused_with_numbers() -> None:
    state = state_of(quota("alice", 6000, 8192), deploy("alice", "a", "req-a-000001").model_copy(
        update={"replicas": 4, "cpu_millicores": 1000, "memory_mib": 512}))  # fmt: skip
    fits = deploy("alice", "b", "req-b-000001").model_copy(
        update={"replicas": 2, "cpu_millicores": 1000, "memory_mib": 512}
    )
    assert admit(state, fits).accepted
    too_big = fits.model_copy(update={"replicas": 3})
    verdict = admit(state, too_big)
    assert not verdict.accepted
    assert verdict.reason == (
        "alice would reserve 7000m CPU and 3584 MiB (3 x 1000m/512 MiB for b, 4000m/2048 MiB "
        "for its other apps); its quota is 6000m CPU and 8192 MiB"
    )
    redeploy_a = deploy("alice", "a", "req-a-000002").model_copy(
        update={"replicas": 6, "cpu_millicores": 1000, "memory_mib": 512}
    )
    assert admit(state, redeploy_a).accepted  # replaces a's 4 replicas, not added to them


def test_scales_deletes_and_namespaces_without_a_quota() -> None:
    state = state_of(quota("alice", 4000, 8192), deploy("alice", "a", "req-a-000001").model_copy(
        update={"replicas": 2, "cpu_millicores": 1000, "memory_mib": 512}))  # fmt: skip
    scale = ScaleRequest(request_id="req-s-000001", namespace="alice", app="a", replicas=5)
    assert "would reserve 5000m CPU" in admit(state, scale).reason
    assert admit(state, scale.model_copy(update={"replicas": 4})).accepted
    ghost = ScaleRequest(request_id="req-s-000002", namespace="alice", app="ghost", replicas=1)
    assert admit(state, ghost).reason == "alice has no app 'ghost' to scale"
    delete = DeleteRequest(request_id="req-d-000001", namespace="alice", app="ghost")
    assert admit(state, delete).reason == "alice has no app 'ghost' to delete"
    assert admit(state, delete.model_copy(update={"app": "a"})).accepted
    bob = deploy("bob", "x", "req-x-000001")
    assert admit(state, bob).reason.startswith(
        "bob has no quota; an admin sets one with `bus quota"
    )


def test_a_request_id_is_bound_to_its_content() -> None:
    first = deploy("alice", "stereo", "req-a-000001")
    state = state_of(quota("alice", 20_000, 65_536), first)
    assert recall(state, first) == Verdict(True, "already admitted")  # a redelivery
    assert recall(state, deploy("alice", "other", "req-a-000002")) is None  # a new id
    reused = ScaleRequest(request_id="req-a-000001", namespace="alice", app="stereo", replicas=1)
    verdict = recall(state, reused)
    assert verdict is not None and not verdict.accepted
    assert verdict.reason == (
        "request id req-a-000001 was used before for another request; "
        "send each request with an id of its own"
    )
    assert recall(state, first.model_copy(update={"replicas": 2})) == verdict


def test_a_snapshot_replaces_the_state_and_what_came_after_it_is_applied_again() -> None:
    revoke = TokenRevoke(request_id="req-revoke-1", key_id="k" * 16)
    state = state_of(
        quota("alice", 20_000, 65_536),
        deploy("alice", "stereo", "req-a-000001"),
        CordonRequest(request_id="req-c-000001", node="edge", action="drain"),
        revoke,
    )
    snapshot = state.snapshot()
    assert snapshot.through == 3
    # a reader that starts after the first entries were dropped: a cut-off tail, then the
    # snapshot (written after entry 4 was appended), then what came after
    late = DesiredState()
    late.apply(Entry(4, ScaleRequest(request_id="req-a-000002", namespace="alice",
                                     app="stereo", replicas=2)))  # fmt: skip
    late.apply(Entry(5, snapshot))
    late.apply(Entry(6, DeleteRequest(request_id="req-d-000001", namespace="bob", app="x")))
    assert late.quotas == state.quotas and late.cordons == {"edge": "drain"}
    assert late.revoked == {"k" * 16: 3} and late.snapshot_offset == 5
    assert late.deployments[("alice", "stereo")].replicas == 2  # entry 4, applied again
    assert late.deployments[("alice", "stereo")].generation == 1
    assert recall(late, revoke) == Verdict(True, "already admitted")
    assert late.offset == 6
    assert (
        late.snapshot().model_dump()
        == JournalSnapshot.model_validate_json(late.snapshot().model_dump_json()).model_dump()
    )  # it survives the wire
