"""The input signal, read from ``event*`` files through the event loop.

This machine has no input devices (no /dev/input, no uinput module to make one), so each
"device" here is a named pipe called ``event0``: the source opens it the way it opens a
real device (non-blocking, read by the event loop) and the test writes the kernel's
24-byte ``struct input_event`` records into it, as a keyboard driver would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.connection import Bus
from nodeagent.agent import AgentSettings
from nodeagent.input import InputSource
from nodeagent.policy import PolicySettings
from schemas import (
    Amount,
    NodePresence,
    PresenceCause,
    PresenceState,
    ReplicaStatus,
    Resources,
    StartReplica,
)

from .helpers import Events, collect_events, running_agent, wait_until

KEY_A = struct.pack("llHHi", int(time.time()), 0, 1, 30, 1)  # EV_KEY, KEY_A, pressed


class FakeKeyboard:
    """A named pipe standing in for /dev/input/eventN, written like a keyboard driver."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.fd = -1

    def plug(self) -> None:
        """Open the writing end (the source must have opened the reading end already)."""
        self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)

    def press(self) -> None:
        os.write(self.fd, KEY_A)

    def unplug(self) -> None:
        os.close(self.fd)


@pytest.fixture
def keyboard(tmp_path: Path) -> Iterator[FakeKeyboard]:
    (tmp_path / "input").mkdir()
    device = FakeKeyboard(tmp_path / "input" / "event0")
    yield device
    if device.fd >= 0:
        with contextlib.suppress(OSError):
            os.close(device.fd)


async def test_the_first_event_after_quiet_is_reported_and_the_rest_only_stamp_the_time(
    keyboard: FakeKeyboard,
) -> None:
    reports: list[float] = []
    source = InputSource(reports.append, folder=keyboard.path.parent, quiet_s=0.3, rescan_s=0.1)
    source.start()
    try:
        assert source.devices == [keyboard.path]
        keyboard.plug()
        keyboard.press()
        await wait_until(lambda: len(reports) == 1, what="the first key press")
        first = source.last_input_at
        keyboard.press()  # within quiet_s: stamped, not reported
        await wait_until(lambda: source.last_input_at != first, what="the second press")
        assert len(reports) == 1
        await asyncio.sleep(0.35)
        keyboard.press()
        await wait_until(lambda: len(reports) == 2, what="a press after quiet")

        second = FakeKeyboard(keyboard.path.parent / "event1")  # hot-plugged
        await wait_until(lambda: len(source.devices) == 2, what="the rescan")
        keyboard.unplug()  # end of file: the device is dropped
        await wait_until(lambda: source.devices == [second.path], what="the unplug")
    finally:
        source.stop()
    assert source.devices == []


async def test_a_source_with_no_devices_reports_nothing(tmp_path: Path) -> None:
    source = InputSource(lambda _at: None, folder=tmp_path / "missing")
    source.start()
    source.stop()
    assert source.last_input_at is None


async def test_a_key_press_pauses_the_replicas_and_quiet_resumes_them(
    bus: Bus, unique: str, tmp_path: Path, keyboard: FakeKeyboard
) -> None:
    node = f"kb{unique}"
    events = Events(await collect_events(bus, f"node.{node}.#"))
    settings = AgentSettings(
        node=node,
        capacity=Amount(cpu_millicores=2000, memory_mib=2048),
        desk_reserve=Amount(),
        utmp_path=tmp_path / "utmp",
        input_dir=keyboard.path.parent,
        policy=PolicySettings(start_idle_s=0, continue_idle_s=0.3, input_active_s=0.5),
    )
    async with running_agent(bus, settings, tmp_path / "state") as agent:
        keyboard.plug()
        await bus.publish(
            StartReplica(
                node=node, epoch=1, replica_id="r1", namespace="alice", app="spin",
                image="local", command=(sys.executable, "-c", "while True: pass"), token="t",
                reservation=Resources(cpu_millicores=500, memory_mib=64),
            )
        )  # fmt: skip
        await wait_until(lambda: len(events.of(ReplicaStatus)) == 1, what="r1 started")
        keyboard.press()
        await wait_until(lambda: len(events.of(NodePresence)) == 2, what="presence busy")
        busy = events.of(NodePresence)[1].presence
        assert (busy.state, busy.cause) == (PresenceState.BUSY, PresenceCause.INPUT)
        assert [r.state.value for r in await agent.runtime.replicas()] == ["paused"]
        await wait_until(lambda: len(events.of(NodePresence)) == 3, what="idle again")
        assert events.of(NodePresence)[2].presence.state is PresenceState.IDLE
        assert [r.state.value for r in await agent.runtime.replicas()] == ["running"]


def sysfs_device(root: Path, name: str, **files: str) -> None:
    """A stand-in for ``/sys/class/input/<name>/device`` (no input devices here): the
    capability bitmaps the kernel would write, as hex words."""
    device = root / name / "device"
    (device / "capabilities").mkdir(parents=True)
    for key, value in files.items():
        target = device / key if key == "properties" else device / "capabilities" / key
        target.write_text(value + "\n")


async def test_only_keyboards_mice_and_pointers_count_not_a_lid_switch_or_accelerometer(
    tmp_path: Path,
) -> None:
    """Capabilities as real devices report them (from `evtest` and the kernel's headers):
    a keyboard (EV_KEY with keys), a mouse (EV_REL with REL_X and REL_Y), a touchpad
    (EV_ABS with ABS_X and ABS_Y), a lid switch (EV_SW only), an accelerometer (EV_ABS with
    INPUT_PROP_ACCELEROMETER), and a device whose sysfs entry is missing (it counts)."""
    folder, sysfs = tmp_path / "input", tmp_path / "sys"
    folder.mkdir()
    sysfs_device(sysfs, "event0", ev="120013", key="fffffffffffffffe", properties="0")
    sysfs_device(sysfs, "event1", ev="17", key="1f0000 0 0 0 0", rel="903", properties="0")
    sysfs_device(sysfs, "event2", ev="b", key="e520 10000 0 0 0 0", abs="660800003",
                 properties="5")  # fmt: skip
    sysfs_device(sysfs, "event3", ev="21", sw="1", properties="0")
    sysfs_device(sysfs, "event4", ev="9", abs="7", properties="40")
    for index in range(6):
        os.mkfifo(folder / f"event{index}")
    source = InputSource(lambda _at: None, folder=folder, sys_class=sysfs)
    source.start()
    try:
        assert [path.name for path in source.devices] == ["event0", "event1", "event2", "event5"]
    finally:
        source.stop()
