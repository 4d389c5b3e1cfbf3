"""When to evict a paused replica whose replacement runs (pure: no I/O, no clock).

Theory of operation
-------------------
A person sat down at a PC: its replicas are frozen (they use no CPU) and the reconciler
starts replacements elsewhere. Once a replacement runs, the paused replica is surplus.
Evicting it hands its running calls back to the queue, and they start again elsewhere
from their last checkpoints: the work since then is thrown away. That work,
``unsaved_s``, is what its worker last wrote in its status file and its agent read as it
froze it (:mod:`bus.sdk.status`, :mod:`nodeagent.status`). Keeping it paused bets that
the person leaves soon: the replica then resumes where it stopped, losing nothing, but
its calls wait meanwhile.

Nobody knows how long the person stays, so this is the ski-rental problem. Evicting
delays the held calls by the work they redo (``unsaved_s``); waiting delays them for as
long as the person stays. The rule waits while the replica has been paused for less
than its unsaved work, then evicts: if the person leaves first, nothing is lost and the
wait was the least possible; if not, the calls are late by at most twice the better of
the two choices made in hindsight, and no CPU is wasted while waiting.

So a replica whose calls checkpointed recently, or that runs only short calls, is
evicted at once, as before this rule; one whose long call has no recent checkpoint waits
up to its unsaved work, never longer than ``keep_paused_max_s``, and never past the
agent's own ``max_suspend_s`` (the agent evicts then whatever it is told). Unknown
unsaved work (an agent or a worker that does not say) evicts at once, as does less than
``evict_below_s`` (waiting is not worth a redeployment's churn).
"""

from __future__ import annotations

__all__ = ["keep_paused"]


def keep_paused(
    unsaved_s: float | None,
    paused_for_s: float,
    *,
    keep_paused_max_s: float,
    evict_below_s: float,
) -> bool:
    """Whether a paused replica whose replacement runs should stay paused a while longer.

    Args:
        unsaved_s: the work an eviction would throw away; None when unknown.
        paused_for_s: how long it has been seen paused.
        keep_paused_max_s: the longest it is kept, whatever its unsaved work.
        evict_below_s: less unsaved work than this is evicted at once.
    """
    if unsaved_s is None or unsaved_s < evict_below_s:
        return False
    return paused_for_s < min(unsaved_s, keep_paused_max_s)
