"""How many calls :meth:`TaskClient.map` packs into one message when not told (pure).

Theory of operation: one message per call costs the broker a quorum-queue write, a
delivery, a result and an ack, about a millisecond of its time on a 2-core PC; a task
that runs for microseconds is then all overhead. Packing calls amortizes that, but a
message's calls run one after another on one worker and are answered together, so a big
batch of long calls loses parallelism and holds results back. The sizer aims each message
at :data:`TARGET_S` of work: it keeps a moving mean of the wall-clock seconds calls ran
(workers report it with each result) and packs ``TARGET_S / mean`` calls, at least one
and at most :data:`MOST_CALLS`. Until a first result comes back it sends one call per
message, and one long call brings the size down at once (the mean moves by
:data:`WEIGHT` of each call's difference, so a call 100 times the target alone is enough).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from bus.sdk.protocol import Call, is_raw

__all__ = ["MOST_CALLS", "TARGET_S", "WEIGHT", "BatchSizer", "messages"]

#: The work one message aims to carry (seconds of the calls' wall-clock time).
TARGET_S = 0.05
#: The most calls a message gets from the sizer.
MOST_CALLS = 100
#: How far one call's reported time moves the mean (an exponential moving average).
WEIGHT = 0.02


@dataclass
class BatchSizer:
    """Calls per message from the run times results report."""

    target_s: float = TARGET_S
    most: int = MOST_CALLS
    #: The moving mean of the calls' run times; None until one was reported.
    mean_s: float | None = None

    def observe(self, wall_s: float) -> None:
        """A call ran for ``wall_s`` seconds (0 or less: not reported, ignored)."""
        if wall_s <= 0:
            return
        self.mean_s = (
            wall_s if self.mean_s is None else self.mean_s + WEIGHT * (wall_s - self.mean_s)
        )

    @property
    def size(self) -> int:
        """Calls for the next message."""
        if self.mean_s is None:
            return 1
        return max(1, min(self.most, int(self.target_s / self.mean_s)))


def messages(calls: list[Call]) -> Iterator[list[Call]]:
    """A batch as messages: its JSON calls together, each raw-bytes call alone."""
    raw = [call for call in calls if is_raw(call)] if len(calls) > 1 else []
    if not raw:
        yield calls
        return
    packed = [call for call in calls if not is_raw(call)]
    if packed:
        yield packed
    yield from ([call] for call in raw)
