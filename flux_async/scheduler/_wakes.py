"""Wake-ups: what the driver remembers of them and the rules that decide whether one moves a
task's poll (:class:`Wakes`).

A wake-up says "this task may be done now" (a webhook arrived). It is never a result: the poll
it brings forward confirms the state. The rules here make it cheap to abuse: an unknown task
costs nothing, an event id among the recent ones is ignored, a task with a wake-up pending is
not polled twice for it, and a task is not polled again within ``min_interval`` of its latest
answer. *Where* the poll goes is the timing model's (``_timing.wake_poll``, ``follow_up``).

Pure: no clock (every time is handed in), no event loop, no I/O; nothing from the session,
transport or codecs. The driver (``_driver``) calls it and moves the poll.
"""

from __future__ import annotations

import collections

from ._policy import PollPolicy
from ._records import Watch
from ._timing import follow_up, wake_poll

__all__ = ["EVENT_MEMORY", "RecentIds", "Wakes"]

#: Webhook event ids remembered for deduplication (the most recent ones).
EVENT_MEMORY = 4096


class RecentIds:
    """The most recent ``cap`` distinct ids: a flood of forged ids evicts the oldest, so memory
    stays bounded; an id seen again counts as recent again."""

    __slots__ = ("cap", "ids")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.ids: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, key: str) -> bool:
        """Remember ``key``; False if it was already remembered."""
        ids = self.ids
        if key in ids:
            ids.move_to_end(key)
            return False
        ids[key] = None
        if len(ids) > self.cap:
            ids.popitem(last=False)
        return True


class Wakes:
    """The recent event ids and the counts of wake-ups moved and ignored."""

    __slots__ = ("events", "ignored", "moved")

    def __init__(self, cap: int = EVENT_MEMORY) -> None:
        self.events = RecentIds(cap)
        self.moved = 0
        self.ignored = 0

    def admit(
        self, rec: Watch | None, event_id: str | None, policy: PollPolicy, now: float
    ) -> float | None:
        """Take a wake-up for ``rec`` (None: not watched) at ``now``; the time its poll moves
        to, or None when it moves nothing (see ``PollScheduler.wake``)."""
        if (
            rec is None
            or rec.on_done is None
            or (event_id is not None and not self.events.add(event_id))
            or rec.woken is not None  # pending: the answer of a poll sent after it settles it
        ):
            self.ignored += 1
            return None
        rec.woken = now
        due = wake_poll(rec, policy, now)
        if rec.due is None or rec.due <= due + policy.quantum:  # in flight, or due as soon
            self.ignored += 1
            return None
        self.moved += 1
        return due

    @staticmethod
    def settle(
        rec: Watch, start: float, terminal: bool, policy: PollPolicy, now: float
    ) -> tuple[float | None, float | None]:
        """A poll of ``rec``, sent at ``start``, was answered at ``now`` while a wake-up was
        pending: ``(announced, follow)``. A poll sent after the wake-up settles it, and
        ``announced`` is when it came (for learning the duration). A poll already in flight
        then may have been answered before the announced completion: if it found the task
        still running, ``follow`` is when to poll it again, and the wake-up stays pending
        until that answer."""
        woken = rec.woken
        rec.woken = None
        if woken is not None and start >= woken:
            return woken, None
        if terminal:
            return None, None
        rec.woken = now
        return None, follow_up(start, policy, now)
