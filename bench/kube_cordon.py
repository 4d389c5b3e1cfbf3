"""Milliseconds from a PC's busy event on the bus until its Kubernetes node is cordoned
and its managed pod evicted, and from the idle event until the node is schedulable again.

Starts RabbitMQ with the helper the tests use, the Kubernetes bridge with its production
defaults on a fresh vhost, and the tests' stand-in for the API server (no Kubernetes API
server can run here: `tests/kube_standin.py` speaks the endpoints the bridge calls), with
one node and one managed pod per PC. Each trial publishes a PC's presence as its agent
would and polls the stand-in every millisecond.

Usage: python bench/kube_cordon.py [--trials 30] [--pcs 4]
Prints the sample count, p50, p99 (with 100 trials or more) and max of each; the last
line is `cordon_and_evict_max_ms: X`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.figures import summary  # noqa: E402
from bus.connection import Bus  # noqa: E402
from bus.topology import declare_platform  # noqa: E402
from idlecloud.dev.services import create_vhost, delete_vhost, ensure_rabbitmq  # noqa: E402
from schemas import NodePresence, Presence, PresenceCause, PresenceState, utc_now  # noqa: E402
from services.kubebridge.service import BridgeSettings, KubeBridge  # noqa: E402
from tests.helpers import open_doors, wait_until  # noqa: E402
from tests.kube_standin import StandIn  # noqa: E402


async def main(trials: int, pc_count: int) -> None:
    broker = create_vhost(f"bench-kube-{uuid.uuid4().hex[:8]}")
    api = await StandIn().start()
    pcs = [f"pc{i}" for i in range(pc_count)]
    for pc in pcs:
        api.add_node(pc)
    settings = BridgeSettings(
        frozenset({"lab"}), kubeconfig=api.kubeconfig(Path(tempfile.mkdtemp()))
    )
    cordon_ms: list[float] = []
    uncordon_ms: list[float] = []
    try:
        async with Bus(broker.url, connection_name="bench") as bus:
            await declare_platform(bus)
            await open_doors(bus, *pcs)  # the bench speaks for the PCs
            bridge = KubeBridge(settings)
            await bridge.start(bus)

            async def presence(pc: str, state: PresenceState) -> None:
                await bus.publish(NodePresence(node=pc, presence=Presence(
                    state=state, cause=PresenceCause.SESSION, since=utc_now())))  # fmt: skip

            for pc in pcs:
                await presence(pc, PresenceState.IDLE)
            await wait_until(lambda: bridge.status.nodes_mapped == pc_count, 30, "the bridge")
            for trial in range(trials):
                pc = pcs[trial % pc_count]
                api.add_pod("lab", f"web-{trial}", pc)
                began = time.perf_counter()
                await presence(pc, PresenceState.BUSY)
                await wait_until(lambda pc=pc, trial=trial: api.unschedulable(pc)
                                 and ("lab", f"web-{trial}") not in api.pods, 30, "cordon",
                                 interval_s=0.001)  # fmt: skip
                cordon_ms.append(1000 * (time.perf_counter() - began))
                began = time.perf_counter()
                await presence(pc, PresenceState.IDLE)
                await wait_until(lambda pc=pc: not api.unschedulable(pc), 30, "uncordon",
                                 interval_s=0.001)  # fmt: skip
                uncordon_ms.append(1000 * (time.perf_counter() - began))
            await bridge.stop(1.0)
    finally:
        await api.stop()
        delete_vhost(broker.vhost)
    print(f"trials: {trials}, PCs and nodes: {pc_count}, resync_s: {settings.resync_s}")
    print("\n".join(summary("uncordon", uncordon_ms) + summary("cordon_and_evict", cordon_ms)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--pcs", type=int, default=4)
    arguments = parser.parse_args()
    ensure_rabbitmq()
    asyncio.run(main(arguments.trials, arguments.pcs))
