"""The driver's records: one per waiting task (:class:`Watch`) and one per provider
(:class:`ProviderQueue`, its heap of due polls and its 429 pause).

Plain slotted data with no behaviour: the driver (``_driver``) fills and reads them. No clock, no
event loop; nothing from the session, transport or codecs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from ..models import TaskRef, TaskState
from ._learned import Learned
from ._timing import WatchState

__all__ = ["ConnectionGate", "DoneCallback", "HeapEntry", "PollOrder", "ProviderQueue", "Watch"]

#: What ``on_done`` receives: the terminal state, or the exception that ended the watch.
DoneCallback = Callable[[TaskState | BaseException], None]


class Watch(WatchState):
    """One waiting task: the timing model's state plus what the driver needs (a few hundred
    bytes, one object per task)."""

    __slots__ = (
        "deadline",
        "due",  # the due time of its live heap entry; None while in flight or ended
        "errors",  # consecutive failed polls
        "km",  # what is learned for the task's provider and model
        "on_done",  # None once the watch has ended: its heap entry, if any, is stale
        "queue",
        "ref",
        "seq",
        "woken",  # when a pending wake-up came (None: none pending); the next answer settles it
    )

    def __init__(
        self,
        ref: TaskRef,
        on_done: DoneCallback,
        seq: int,
        queue: ProviderQueue,
        km: Learned,
        t0: float,
        deadline: float | None,
    ) -> None:
        # WatchState.__init__(self, t0), written out: one call less per task (a test checks
        # that both start a task alike).
        self.t0 = t0
        self.live = False
        self.polls = 0
        self.push = False
        self.estimate: float | None = None
        self.last_t: float | None = None
        self.z_t: float | None = t0
        self.a_t: float | None = None
        self.a_p = 0.0
        self.c_t: float | None = None
        self.c_p = 0.0
        self.w_hi = math.inf
        self.miss_t: float | None = None
        self.ref = ref
        self.on_done: DoneCallback | None = on_done
        self.seq = seq
        self.queue = queue
        self.km = km
        self.deadline = deadline
        self.errors = 0
        self.due: float | None = None
        self.woken: float | None = None


class ConnectionGate(Protocol):
    """A pool of connections a poll waits for without a task (the aiohttp transport's own)."""

    def take_connection(self) -> bool:
        """Take a free connection for a poll sent later; False when none is free."""
        ...

    def queue_turn(self, turn: Callable[[], bool]) -> None:
        """Keep a place in the pool's queue: ``turn()`` is called when a connection comes to
        it, and returns True when it took it."""
        ...

    def let_go(self) -> None:
        """Give back a connection taken for a poll that will not be sent."""
        ...


HeapEntry = tuple[float, int, Watch]
#: A task to poll now, when it was due, and the gate whose connection was taken for it (None:
#: the poll waits for its connection itself, if it must).
PollOrder = tuple[Watch, float, ConnectionGate | None]


class ProviderQueue:
    """The waiting tasks of one provider, and that provider's 429 pause."""

    __slots__ = ("heap", "paused_until", "rate_limit_streak", "stale")

    def __init__(self) -> None:
        self.heap: list[HeapEntry] = []
        self.paused_until = -math.inf
        self.rate_limit_streak = 0
        self.stale = 0
