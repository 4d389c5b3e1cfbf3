"""An upgrade in progress: agents of the previous version meet a new placement service.

ReplicaStatus version 2 says a PC's refusal in a typed field (:class:`schemas.Refusal`);
version 1 said it only in words. A live placement service on the real broker is sent
version 1 statuses, exactly as an old agent encoded them (no ``refusal`` field, version
header 1): it must read them, take the old refusal for a refusal (no backing off) and the
crash for a crash, and dead-letter a version it does not know.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

from bus import names
from bus.codec import encode
from schemas import SCHEMA_VERSION_HEADER, ReplicaState, ReplicaStatus, utc_now
from services.placement.reconciler import ReconcilerSettings
from services.placement.service import Placement

from .control_plane import FAST, control_plane
from .helpers import DeadLetterTap, open_doors, wait_until

#: Long enough that the first crash's backoff is still showing when the test reads it.
PATIENT = replace(FAST, reconciler=ReconcilerSettings(backoff_base_s=60.0))


def _status(node: str, replica_id: str, reason: str) -> ReplicaStatus:
    return ReplicaStatus(node=node, replica_id=replica_id, namespace="alice", app="stereo",
                         state=ReplicaState.FAILED, at=utc_now(), reason=reason)  # fmt: skip


async def test_a_new_placement_reads_an_old_agents_statuses(tmp_path: Path) -> None:
    """Version 1's refusal does not back the app off; its crash does; version 3 is refused."""
    async with control_plane(tmp_path, (), settings=PATIENT) as plane:
        placement = next(s for s in plane.services if isinstance(s, Placement))
        tap = await DeadLetterTap(placement._events.name).start(plane.bus)
        await plane.quota("alice", 4000)
        assert (await plane.deploy("alice", "stereo", 1)).accepted
        await open_doors(plane.bus, "old-pc")

        async def send(status: ReplicaStatus, version: int) -> None:
            body, properties = encode(status)
            document = json.loads(body)
            del document["refusal"]  # version 1 had no such field
            properties.headers = {**(properties.headers or {}), SCHEMA_VERSION_HEADER: version}
            await plane.bus.publish_raw(names.route(status), json.dumps(document).encode(),
                                        properties)  # fmt: skip

        await send(_status("old-pc", "stereo-1-aaaaaaaa", "this PC is occupied (session)"), 1)
        await send(_status("old-pc", "stereo-1-bbbbbbbb", "needs 1000m/128MiB, free 0m/0MiB"), 1)
        await send(_status("old-pc", "stereo-1-cccccccc", "exited with code 1"), 1)

        async def reason() -> str:
            return (await plane.apps("alice")).apps[0].reason

        deadline = asyncio.get_running_loop().time() + 20
        while not (said := await reason()).startswith("crashed"):
            assert asyncio.get_running_loop().time() < deadline, f"no backoff yet: {said!r}"
            await asyncio.sleep(0.1)
        assert said.startswith("crashed 1 times")  # the refusals did not count
        await send(_status("old-pc", "stereo-1-dddddddd", "exited with code 1"), 3)
        await wait_until(lambda: len(tap.reasons()) == 1, 20, "version 3 to be dead-lettered")
        assert "ReplicaStatus version 3 is not supported" in tap.reasons()[0]
        assert "reads versions 1, 2" in tap.reasons()[0]
        assert (await reason()).startswith("crashed 1 times")
