"""The PC list at campus scale: asked page by page, so no reply nears the body limit.

One reply is one message, and bodies over 1 MiB are refused: at about 330 bytes a PC, one
reply could list 3,150 PCs. The pure part pages a registry of 10,000 PCs; the real part
runs `bus nodes --json` against a placement service that heard 10,000 PCs' heartbeats on
the real broker (synthetic PCs: their doors declared and their heartbeats published by the
test, no agents behind them).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.scale_pcs import spawn
from bus.codec import MAX_BODY_BYTES, encode
from bus.connection import Bus
from bus.pages import APPS_PAGE, NODES_PAGE
from idlecloud.dev.services import BrokerInfo
from schemas import (
    Amount,
    AppsQuery,
    AppView,
    DeploymentState,
    DeployRequest,
    NodeHeartbeat,
    NodesQuery,
    ReplicaState,
)
from services.placement.reconciler import AppStatus, replica_id
from services.placement.registry import KnownReplica, Registry
from services.placement.service import Placement
from services.placement.views import apps_reply, nodes_reply
from services.state import AppKey, DesiredState, Spec

from .control_plane import FAST, control_plane
from .examples import EXAMPLES
from .helpers import open_doors, wait_until
from .test_cli import bus_cli

PCS = 10_000


def heartbeat(index: int) -> NodeHeartbeat:
    """A synthetic PC's first heartbeat: the catalogue's example under a name of its own."""
    example = EXAMPLES[NodeHeartbeat]
    assert isinstance(example, NodeHeartbeat)
    return example.model_copy(update={"node": f"pc{index:05d}", "seq": 1, "replicas": ()})


def test_pages_list_every_pc_once_and_each_stays_well_under_the_body_limit() -> None:
    registry = Registry()
    for index in range(PCS):
        assert registry.heartbeat(heartbeat(index), now=0.0)
    state = DesiredState()
    listed: list[str] = []
    after = None
    while True:
        page = nodes_reply(state, registry, 1.0, NodesQuery(after=after, limit=NODES_PAGE))
        assert len(encode(page)[0]) < MAX_BODY_BYTES / 2
        listed.extend(view.node for view in page.nodes)
        if page.next_after is None:
            break
        after = page.next_after
    assert listed == sorted(registry.nodes) and len(listed) == PCS
    whole = nodes_reply(state, registry, 1.0)  # a version-1 question: every PC at once
    assert [view.node for view in whole.nodes] == listed and whole.next_after is None
    assert len(encode(whole)[0]) > MAX_BODY_BYTES  # what the pages are for


def test_a_page_after_the_last_pc_is_empty_and_the_last() -> None:
    registry = Registry()
    for index in range(3):
        registry.heartbeat(heartbeat(index), now=0.0)
    page = nodes_reply(DesiredState(), registry, 1.0, NodesQuery(after="pc00002", limit=5))
    assert page.nodes == () and page.next_after is None
    page = nodes_reply(DesiredState(), registry, 1.0, NodesQuery(after="pc00000", limit=1))
    assert [view.node for view in page.nodes] == ["pc00001"] and page.next_after == "pc00001"


@pytest.mark.slow
async def test_bus_nodes_lists_ten_thousand_pcs(scratch: tuple[BrokerInfo, Bus]) -> None:
    broker, bus = scratch
    placement = Placement(FAST, retry_s=0.2)
    await placement.start(bus)
    try:
        async with Bus(broker.url, connection_name="10,000 PCs") as pcs:
            doors = [heartbeat(index).node for index in range(PCS)]
            await asyncio.gather(*(open_doors(pcs, *doors[k::8]) for k in range(8)))
            for first in range(0, PCS, 200):  # 200 confirms in flight at a time
                await asyncio.gather(
                    *(pcs.publish(heartbeat(i)) for i in range(first, first + 200))
                )
        await wait_until(lambda: len(placement.registry.nodes) == PCS, 60, "every heartbeat")
        done = await asyncio.to_thread(bus_cli, "nodes", "--json", url=broker.url)
        assert done.returncode == 0, done.stderr
        listed = json.loads(done.stdout)
        assert [view["node"] for view in listed["nodes"]] == sorted(placement.registry.nodes)
        assert listed["next_after"] is None
    finally:
        await placement.stop(1.0)


def big_namespace() -> tuple[DesiredState, Registry, dict[AppKey, AppStatus]]:
    """Alice's app ``stereo-matching``: 10,000 replicas, one on each of 10,000 PCs named as
    a campus might (``room-042-pc-00042``); and ``a`` and ``z``, 3 replicas each."""
    state, registry = DesiredState(), Registry()
    sizes = {"a": 3, "stereo-matching": 10_000, "z": 3}
    statuses = {}
    for index in range(10_000):
        name = f"room-{index % 300:03d}-pc-{index:05d}"
        registry.heartbeat(heartbeat(index).model_copy(update={"node": name}), now=0.0)
    pcs = list(registry.nodes.values())
    for generation, (app, count) in enumerate(sizes.items()):
        request = DeployRequest(request_id=f"deploy-{app}", namespace="alice", app=app,
                                image="local", replicas=count, cpu_millicores=100)  # fmt: skip
        state.deployments[("alice", app)] = Spec(request, count, generation)
        for n in range(count):
            rid = replica_id(app, generation, f"{n:08x}")
            pcs[n].replicas[rid] = KnownReplica(rid, "alice", app, ReplicaState.RUNNING,
                                                Amount(100, 256))  # fmt: skip
        per_node = {pc.name: 1 for pc in pcs[:count]}
        statuses[("alice", app)] = AppStatus(("alice", app), DeploymentState.RUNNING, count,
                                             count, per_node)  # fmt: skip
    return state, registry, statuses


def test_an_app_of_ten_thousand_replicas_comes_in_pages_that_put_back_together() -> None:
    """One reply listing the app's 10,000 replicas is over the body limit; pages of 2,000
    rows, an app split over several, put together list every replica once, in order."""
    state, registry, statuses = big_namespace()
    whole = apps_reply(AppsQuery(namespace="alice"), state, registry, statuses, 1.0)
    assert [len(view.replicas) for view in whole.apps] == [3, 10_000, 3]
    assert len(encode(whole)[0]) > MAX_BODY_BYTES  # what the pages are for
    views: list[AppView] = []
    after, pages = None, 0
    while True:
        question = AppsQuery(namespace="alice", after=after, limit=APPS_PAGE)
        page = apps_reply(question, state, registry, statuses, 1.0)
        pages += 1
        assert len(encode(page)[0]) < MAX_BODY_BYTES / 2
        rows = sum(1 + len(view.replicas) for view in page.apps)
        assert rows <= APPS_PAGE + 1  # + 1: an app going on from the last page, again
        for view in page.apps:
            if views and views[-1].app == view.app:
                assert not view.replicas_per_node  # listed on the page it began on
                views[-1] = views[-1].model_copy(
                    update={"replicas": (*views[-1].replicas, *view.replicas)}
                )
            else:
                views.append(view)
        if page.next_after is None:
            break
        after = page.next_after
    assert pages == 6  # 10,009 rows
    assert views == list(whole.apps)
    ask = AppsQuery(namespace="alice", app="z", limit=2)
    one = apps_reply(ask, state, registry, statuses, 1.0)
    assert [(v.app, len(v.replicas)) for v in one.apps] == [("z", 1)] and one.next_after
    ask = AppsQuery(namespace="alice", app="z", after=one.next_after, limit=10)
    rest = apps_reply(ask, state, registry, statuses, 1.0)
    assert [(v.app, len(v.replicas)) for v in rest.apps] == [("z", 2)] and not rest.next_after


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_bus_apps_lists_ten_thousand_replicas_placed_on_synthetic_pcs(tmp_path: Path) -> None:
    """Placement puts an app of 10,000 replicas on 1,250 synthetic PCs (``bench/scale_pcs.py``:
    each with its door and quorum command queue, taking its StartReplicas and reporting
    what they start as running, with no processes behind them), and `bus apps --json` lists
    every replica, asked page by page."""
    async with control_plane(tmp_path, (), settings=FAST) as plane:
        pcs = await spawn(plane.url, 1250)
        try:
            placement = next(s for s in plane.services if isinstance(s, Placement))
            registry = placement.registry
            await wait_until(lambda: len(registry.nodes) == 1250, 60, "every PC's heartbeat")
            await plane.quota("alice", 10_000 * 10, 10_000 * 128)
            assert (await plane.deploy("alice", "wide", 10_000, cpu_millicores=10)).accepted
            await wait_until(
                lambda: sum(len(node.replicas) for node in registry.nodes.values()) == 10_000,
                120, "10,000 replicas reported",
            )  # fmt: skip
            await wait_until(lambda: placement._statuses.get(("alice", "wide")) is not None
                             and placement._statuses[("alice", "wide")].running == 10_000,
                             30, "the app running")  # fmt: skip
            done = await asyncio.to_thread(bus_cli, "apps", "-n", "alice", "--json", url=plane.url)
            assert done.returncode == 0, done.stderr
            (wide,) = json.loads(done.stdout)["apps"]
            ids = [replica["replica_id"] for replica in wide["replicas"]]
            assert len(ids) == len(set(ids)) == 10_000 and wide["running"] == 10_000
            assert sum(wide["replicas_per_node"].values()) == 10_000
            assert {r["node"] for r in wide["replicas"]} == set(registry.nodes)
        finally:
            pcs.terminate()
            await pcs.communicate()
