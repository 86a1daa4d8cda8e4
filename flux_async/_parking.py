"""Where the library's own tasks wait for work: a cheap wake-up on the running asyncio loop.

The session and the scheduler keep pools of parked coroutines (submitters, poll workers, the
consumer of a batch). Waking one must cost as little as possible and must wake only one: an
``anyio.Event`` shared by the pool is created anew for every wait (a backend look-up each time)
and, once set, wakes every waiter although only one has something to do.

Here each waiter parks on its own future. ``wake_one`` completes the oldest one still waiting;
a waiter that was cancelled has a cancelled future and is skipped. asyncio only: the library runs
on anyio's asyncio backend.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Parking", "Slots"]


class Parking:
    """Coroutines waiting to be handed something to do."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __bool__(self) -> bool:
        """True while some waiter may still be parked (a cancelled one is dropped lazily)."""
        return bool(self._waiters)

    async def wait(self) -> None:
        """Park until :meth:`wake_one` or :meth:`wake_all` picks this waiter."""
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        await future

    def wake_one(self) -> bool:
        """Wake the longest-parked waiter; False when none was parked."""
        waiters = self._waiters
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)
                return True
        return False

    def wake_all(self) -> None:
        """Wake every parked waiter."""
        waiters, self._waiters = self._waiters, deque()
        for future in waiters:
            if not future.done():
                future.set_result(None)


class Slots:
    """A counting semaphore whose free count is read and taken without a call: the hot path
    does ``if slots.free: slots.free -= 1`` and awaits :meth:`acquire` only when none is free.
    :meth:`release` hands a slot straight to the longest waiter. asyncio only, like
    :class:`Parking`; a waiter cancelled after it was handed a slot passes the slot on."""

    __slots__ = ("_waiters", "free")

    def __init__(self, free: int) -> None:
        self.free = free
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        """Take a slot, waiting for one if none is free."""
        if self.free:
            self.free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release()  # it was handed a slot as it was cancelled: not lost
            raise

    def release(self) -> None:
        """Give a slot back: to the longest waiter, else to the free count."""
        waiters = self._waiters
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self.free += 1
