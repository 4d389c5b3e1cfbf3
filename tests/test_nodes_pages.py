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

import pytest

from bus.codec import MAX_BODY_BYTES, encode
from bus.connection import Bus
from bus.pages import NODES_PAGE
from idlecloud.dev.services import BrokerInfo
from schemas import NodeHeartbeat, NodesQuery
from services.placement.registry import Registry
from services.placement.service import Placement
from services.placement.views import nodes_reply
from services.state import DesiredState

from .control_plane import FAST
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
