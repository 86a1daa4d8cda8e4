"""The driver's alarm: sleep until a clock time, or until something due earlier rings it.

With the running loop's own clock it rests on a loop timer and a future; with an injected clock
and sleep (virtual time under test) it sleeps in a cancel scope that a ring cancels. Cancelling
a scope costs far more than setting a future, and the driver is rung about once per batch of
submissions, hence the two ways. Owns no task and decides nothing about *when*: the driver says.
It must not import the session, the transport or the codecs.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["Alarm"]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Alarm:
    """One sleeper at a time; ``at`` is when it wakes by itself (-inf: awake or just rung)."""

    __slots__ = ("_clock", "_future", "_scope", "_sleep", "at")

    def __init__(
        self,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        # Both None: the running loop's time, and a loop timer to rest on.
        self._clock = clock
        self._sleep = sleep
        self._future: asyncio.Future[None] | None = None
        self._scope: anyio.CancelScope | None = None
        self.at = -math.inf

    async def rest(self, at: float) -> None:
        """Sleep until ``at`` (clock time; inf: until rung) or until :meth:`ring`."""
        self.at = at
        try:
            if self._clock is None and self._sleep is None:
                await self._rest_on_loop(at)
            else:
                await self._rest(at)
        finally:
            self.at = -math.inf

    async def _rest_on_loop(self, at: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._future = future
        timer = None if at == math.inf else loop.call_at(at, _resolve, future)
        try:
            await future
        finally:
            self._future = None
            if timer is not None:
                timer.cancel()

    async def _rest(self, at: float) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            if at == math.inf:
                await anyio.sleep_forever()
            else:
                clock = self._clock or anyio.current_time
                await (self._sleep or anyio.sleep)(max(0.0, at - clock()))
        self._scope = None

    def ring(self) -> None:
        """Wake the sleeper now (nothing happens if none sleeps)."""
        future = self._future
        if future is not None:
            self._future = None
            self.at = -math.inf
            if not future.done():
                future.set_result(None)
            return
        scope = self._scope
        if scope is not None:
            self._scope = None
            self.at = -math.inf
            scope.cancel()
