"""The input signal: when a keyboard, mouse or touchpad was last used, from /dev/input.

Every readable ``event*`` device in the input folder is opened non-blocking and handed to
the event loop (``add_reader``): nothing runs until a key is pressed or the mouse moves.
Each read drains the device's queued events and stamps the time; the agent is told only
when input starts after at least ``quiet_s`` without any (a moving mouse makes hundreds of
events a second, and the policy needs the first one, not every one). Devices that cannot
be read (no permission, as for a non-root agent) are skipped; a device that goes away is
dropped; new devices are picked up every ``rescan_s``. Where no device is readable the
source reports nothing and the other signals decide.

Only devices a person works with count: ones that report keys or buttons, relative
motion (a mouse) or absolute pointer motion (a touchpad, a tablet), from their capability
bits in sysfs (``/sys/class/input/eventN/device/capabilities``). A lid switch (switch
events only) or an accelerometer (absolute axes with the accelerometer property) would
otherwise keep a PC busy for ever. A device whose capabilities cannot be read counts: a
person missed is worse than a PC left idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["InputSource", "is_a_persons_device"]

_READ_BYTES = 24 * 64  # 64 ``struct input_event`` records on 64-bit Linux
#: Event types and codes from linux/input-event-codes.h.
_EV_KEY, _EV_REL, _EV_ABS = 1, 2, 3
_REL_X, _REL_Y, _ABS_X, _ABS_Y = 0, 1, 0, 1
_INPUT_PROP_ACCELEROMETER = 6
_SYS_CLASS_INPUT = Path("/sys/class/input")


def _bits(path: Path) -> int:
    """A sysfs bitmap (hex words, most significant first) as one integer.

    Raises:
        OSError: it cannot be read.
        ValueError: it is not a bitmap.
    """
    words = path.read_text().split()
    return sum(int(word, 16) << (64 * index) for index, word in enumerate(reversed(words)))


def is_a_persons_device(device: Path) -> bool:
    """Whether input device ``device`` (its sysfs folder, ``.../eventN/device``) is one a
    person uses: keys or buttons, relative motion, or absolute pointer motion that is not
    an accelerometer's. True if its capabilities cannot be read."""
    try:
        events = _bits(device / "capabilities" / "ev")
        if events >> _EV_KEY & 1 and _bits(device / "capabilities" / "key"):
            return True
        if events >> _EV_REL & 1:
            relative = _bits(device / "capabilities" / "rel")
            if relative >> _REL_X & 1 or relative >> _REL_Y & 1:
                return True
        if events >> _EV_ABS & 1:
            absolute = _bits(device / "capabilities" / "abs")
            properties = _bits(device / "properties")
            pointer = absolute >> _ABS_X & 1 and absolute >> _ABS_Y & 1
            return bool(pointer) and not properties >> _INPUT_PROP_ACCELEROMETER & 1
    except (OSError, ValueError):
        return True
    return False


class InputSource:
    """Tracks the last input event on any readable device; see the module's header."""

    def __init__(
        self,
        on_input: Callable[[float], None],
        *,
        folder: str | Path = "/dev/input",
        sys_class: Path = _SYS_CLASS_INPUT,
        quiet_s: float = 1.0,
        rescan_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folder = Path(folder)
        self.sys_class = sys_class
        self.last_input_at: float | None = None
        self._on_input = on_input
        self._quiet_s = quiet_s
        self._rescan_s = rescan_s
        self._clock = clock
        self._open: dict[Path, int] = {}
        self._rescan: asyncio.TimerHandle | None = None

    @property
    def devices(self) -> list[Path]:
        """The devices being watched now."""
        return sorted(self._open)

    def start(self) -> None:
        """Open every readable input device and watch it."""
        self._scan()

    def stop(self) -> None:
        """Stop watching and close every device."""
        if self._rescan is not None:
            self._rescan.cancel()
            self._rescan = None
        for path in list(self._open):
            self._drop(path)

    def _scan(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            for path in sorted(self.folder.glob("event*")):
                if path in self._open:
                    continue
                if not is_a_persons_device(self.sys_class / path.name / "device"):
                    continue  # a lid switch, an accelerometer: looked at again next scan
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError:
                    continue  # not readable by this user: another signal must do
                self._open[path] = fd
                loop.add_reader(fd, self._on_readable, path)
        self._rescan = loop.call_later(self._rescan_s, self._scan)

    def _drop(self, path: Path) -> None:
        fd = self._open.pop(path)
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)

    def _on_readable(self, path: Path) -> None:
        got = False
        while True:
            try:
                chunk = os.read(self._open[path], _READ_BYTES)
            except BlockingIOError:
                break
            except OSError:  # ENODEV: unplugged
                self._drop(path)
                break
            if not chunk:  # end of file: the device is gone
                self._drop(path)
                break
            got = True
        if not got:
            return
        now, previous = self._clock(), self.last_input_at
        self.last_input_at = now
        if previous is None or now - previous >= self._quiet_s:
            self._on_input(now)
