"""The answers to the apps and PCs questions, built from the desired state and the registry."""

from __future__ import annotations

import bisect
from collections import Counter
from pathlib import PurePosixPath

from schemas import (
    ZERO,
    AppsQuery,
    AppsReply,
    AppView,
    DataFolderView,
    DeploymentState,
    NodesQuery,
    NodesReply,
    NodeView,
    PresenceState,
    ReplicaState,
    ReplicaView,
    utc_now,
)
from services.placement.reconciler import AppStatus
from services.placement.registry import Registry
from services.state import AppKey, DesiredState

__all__ = ["apps_reply", "nodes_reply"]

_ENDED = (ReplicaState.EXITED, ReplicaState.FAILED)


def apps_reply(
    query: AppsQuery,
    state: DesiredState,
    registry: Registry,
    statuses: dict[AppKey, AppStatus],
    now: float,
) -> AppsReply:
    """One namespace's apps (or one of them), its quota, and what it reserves and runs."""
    namespace = query.namespace
    replicas: dict[AppKey, list[ReplicaView]] = {}
    running = ZERO
    for node in registry.nodes.values():
        if registry.lost(node, now):
            continue
        for replica in node.replicas.values():
            if replica.namespace != namespace:
                continue
            replicas.setdefault(replica.key, []).append(
                ReplicaView(replica_id=replica.replica_id, node=node.name, state=replica.state)
            )
            if replica.state is ReplicaState.RUNNING and node.presence is not PresenceState.BUSY:
                running += replica.reservation
    apps = []
    for key, spec in sorted(state.deployments.items()):
        if key[0] != namespace or query.app not in (None, key[1]):
            continue
        # one tick's view: its desired count with its counts (a scale since shows next tick)
        status = statuses.get(key) or AppStatus(key, DeploymentState.PENDING, spec.replicas, 0, {})
        apps.append(
            AppView(
                app=key[1],
                image=spec.request.image,
                state=status.state,
                desired=status.desired,
                running=status.running,
                starting=status.starting,
                reservation=spec.reservation.wire(),
                replicas_per_node=status.per_node,
                replicas=tuple(sorted(replicas.get(key, ()), key=lambda r: (r.node, r.replica_id))),
                reason=status.reason[:1024],
            )
        )
    page, next_after = _page(apps, query)
    quota = state.quotas.get(namespace)
    roots = Counter(node.data_root for node in registry.nodes.values()
                    if node.data_root is not None and not registry.lost(node, now))  # fmt: skip
    return AppsReply(
        namespace=namespace,
        apps=tuple(page),
        next_after=next_after,
        data_folders=tuple(
            DataFolderView(path=str(PurePosixPath(root) / namespace), pcs=pcs)
            for root, pcs in sorted(roots.items())
        )[:64],
        quota=None if quota is None else quota.wire(),
        reserved=state.reserved(namespace).wire(),
        running=running.wire(),
        at=utc_now(),
    )


#: A row of the apps list: an app's own (no replica) or one of its replicas', under its key.
_Row = tuple[tuple[str, ...], AppView, ReplicaView | None]


def _page(views: list[AppView], query: AppsQuery) -> tuple[list[AppView], str | None]:
    """The apps ``query`` asks for: the rows (each app, then each of its replicas) after
    its ``after``, at most ``limit`` of them; and the cursor of the next page, if any."""
    if query.limit is None and query.after is None:
        return views, None
    after = tuple(query.after.split("/")) if query.after else ()
    rows: list[_Row] = []
    for view in views:
        rows.append(((view.app,), view, None))
        rows += [((view.app, r.node, r.replica_id), view, r) for r in view.replicas]
    first = bisect.bisect_right([key for key, _, _ in rows], after) if after else 0
    chosen = rows[first : first + (query.limit or len(rows))]
    groups: list[tuple[AppView, list[ReplicaView]]] = []
    for _key, view, replica in chosen:
        if not groups or groups[-1][0].app != view.app:
            # an app going on from the last page: its counts per PC were listed there
            going_on = replica is not None
            groups.append((view.model_copy(update={"replicas_per_node": {}}) if going_on
                           else view, []))  # fmt: skip
        if replica is not None:
            groups[-1][1].append(replica)
    page = [view.model_copy(update={"replicas": tuple(replicas)}) for view, replicas in groups]
    more = first + len(chosen) < len(rows)
    return page, "/".join(chosen[-1][0]) if more and chosen else None


def nodes_reply(
    state: DesiredState, registry: Registry, now: float, page: NodesQuery | None = None
) -> NodesReply:
    """The PCs ``page`` asks for (all without one), by name: free, busy with a person,
    lost, cordoned or draining; and what each holds."""
    names = sorted(registry.nodes)
    first = bisect.bisect_right(names, page.after) if page and page.after else 0
    limit = page.limit if page and page.limit else len(names)
    chosen = names[first : first + limit]
    more = first + limit < len(names)
    views = []
    for name in chosen:
        node = registry.nodes[name]
        if registry.lost(node, now):
            label = "lost"
        elif name in state.cordons:
            label = "draining" if state.cordons[name] == "drain" else "cordoned"
        else:
            label = node.presence.value
        live = [
            r
            for r in node.replicas.values()
            if r.state not in (ReplicaState.EXITED, ReplicaState.FAILED)
        ]
        views.append(
            NodeView(
                node=name,
                state=label,
                presence=node.presence,
                mode=node.mode,
                cause=node.cause,
                capacity=node.capacity.wire(),
                allocatable=node.allocatable.wire(),
                reserved=sum((r.reservation for r in live), ZERO).wire(),
                usage=node.usage.wire(),
                replicas=len(live),
                runtime=node.runtime,
                seconds_since_heartbeat=min(1e9, max(0.0, now - node.last_seen)),
            )
        )
    return NodesReply(
        nodes=tuple(views), at=utc_now(), next_after=chosen[-1] if more and chosen else None
    )
