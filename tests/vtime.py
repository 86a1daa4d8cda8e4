"""Virtual time for scheduler tests: a clock and a sleep that never wait in real time.

``vt.clock()`` is the virtual now; ``await vt.sleep(d)`` parks the caller until virtual time
reaches now + d. The test drives time with ``await vt.advance(d)`` / ``await vt.run_until(t)``:
each lets every runnable coroutine run until the event loop has nothing left to do, then jumps
to the next parked sleeper, and so on up to the target time. Nothing here sleeps for real.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable

__all__ = ["VirtualTime"]

# Without access to the loop's ready queue, this many zero-sleeps count as "settled".
_FALLBACK_PASSES = 50
# A guard against a test whose coroutines never stop scheduling each other.
_MAX_PASSES = 100_000


class VirtualTime:
    """A virtual clock with its sleep, for one event loop."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        """The virtual now."""
        return self._now

    async def sleep(self, delay: float) -> None:
        """Park until virtual time reaches now + ``delay`` (a checkpoint even for 0)."""
        if delay <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if delay < math.inf:
            heapq.heappush(self._sleepers, (self._now + delay, next(self._seq), future))
        await future

    def next_wakeup(self) -> float:
        """When the earliest parked sleeper is due (inf when none is)."""
        sleepers = self._sleepers
        while sleepers and sleepers[0][2].done():  # cancelled while parked
            heapq.heappop(sleepers)
        return sleepers[0][0] if sleepers else math.inf

    async def settle(self) -> None:
        """Let every runnable coroutine run until none is left, without moving time."""
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)
        for passes in range(_MAX_PASSES):
            await asyncio.sleep(0)
            if ready is None:
                if passes >= _FALLBACK_PASSES:
                    return
            elif not ready:
                return
        raise RuntimeError("the event loop never settled: coroutines keep scheduling each other")

    async def run_until(self, when: float) -> None:
        """Advance virtual time to ``when``, waking every sleeper due on the way, in order."""
        await self.settle()
        while self.next_wakeup() <= when:
            self._now = max(self._now, self._sleepers[0][0])
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, future = heapq.heappop(self._sleepers)
                if not future.done():
                    future.set_result(None)
            await self.settle()
        self._now = max(self._now, when)
        await self.settle()

    async def advance(self, delay: float) -> None:
        """Advance virtual time by ``delay``."""
        await self.run_until(self._now + delay)

    async def run_while(self, condition: Callable[[], bool], *, limit: float) -> None:
        """Advance from sleeper to sleeper while ``condition()`` holds, at most to ``limit``."""
        await self.settle()
        while condition() and self._now < limit:
            await self.run_until(min(limit, self.next_wakeup()))
