"""The emulator's webhook poster: one driver task that wakes when a delivery falls due and one
task per request in flight, all owned by the emulator's application (started with it and
cancelled, then awaited, when it stops). What to send and when is :mod:`._hooks`'s; this module
only posts and reports the answers. Imports aiohttp, the standard library and the emulator's
own modules only.

A receiver that is slow or unreachable costs a task and a connection slot here, never a
handler's time: the server's handlers only push records onto the queue. At most
:data:`MAX_IN_FLIGHT` posts run at once; the rest wait in the heap.

With a :class:`~flux_async.emulator.ManualClock` the driver is woken by the clock's moves, so
a test advances the clock and awaits :meth:`WebhookSender.wait_idle` instead of sleeping; with
any other clock it sleeps until the next due time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from ._core import Core
from ._hooks import Delivery, Outgoing

__all__ = ["MAX_IN_FLIGHT", "WebhookSender"]

#: Webhook posts in flight at once.
MAX_IN_FLIGHT = 256


class WebhookSender:
    """Posts the deliveries of ``core.webhooks``; mount :meth:`lifespan` in the app's
    ``cleanup_ctx``."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.queue = core.webhooks
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """Start the driver with the application; at its end cancel every delivery, await
        them all, and close the client session."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT, force_close=True),
            auto_decompress=False,
        )
        self.queue.notify = self._notify
        subscribe = getattr(self.core.clock, "subscribe", None)
        if subscribe is not None:
            subscribe(self._notify)
        driver = asyncio.ensure_future(self._drive())
        try:
            yield
        finally:
            unsubscribe = getattr(self.core.clock, "unsubscribe", None)
            if unsubscribe is not None:
                unsubscribe(self._notify)
            self.queue.notify = _nothing
            driver.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(driver, *self._tasks, return_exceptions=True)
            self._tasks.clear()
            await self._session.close()
            self._session = None

    async def wait_idle(self) -> None:
        """Return once nothing is in flight and nothing is due at the emulator's current time
        (later deliveries may still wait for the clock)."""
        if self._idle is None:
            raise RuntimeError("the emulator is not running")
        await self._idle.wait()

    # -- internals -------------------------------------------------------------------------------

    def _notify(self) -> None:
        """Something changed (a delivery queued, the clock moved): let the driver look again."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._poke()
        else:
            loop.call_soon_threadsafe(self._poke)

    def _poke(self) -> None:
        if self._wake is not None and self._idle is not None:
            self._idle.clear()
            self._wake.set()

    async def _drive(self) -> None:
        assert self._wake is not None
        wake = self._wake
        manual = hasattr(self.core.clock, "subscribe")
        while True:
            wake.clear()
            now = self.core.clock()
            room = MAX_IN_FLIGHT - self.queue.in_flight
            if room > 0:
                for delivery in self.queue.pop_due(now, room, self.core.plans):
                    task = asyncio.ensure_future(self._post(delivery))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            self._check_idle()
            due = self.queue.next_due()
            if due is None or manual or room <= 0:
                timeout = None
            else:
                timeout = max(0.0, due - self.core.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)

    def _check_idle(self) -> None:
        assert self._idle is not None
        due = self.queue.next_due()
        if self.queue.in_flight == 0 and (due is None or due > self.core.clock()):
            self._idle.set()

    async def _post(self, delivery: Delivery) -> None:
        core = self.core
        sc = core.plans[delivery.provider]
        if core.origin is not None:
            self.queue.origin = core.origin
        requests = self.queue.prepare(delivery, core.clock(), sc)
        statuses = await asyncio.gather(*(self._send(r, sc.webhook_timeout) for r in requests))
        self.queue.finish(delivery, list(statuses), core.clock(), core.plans[delivery.provider])
        self._notify()

    async def _send(self, request: Outgoing, limit: float) -> int | None:
        """POST one request: its status, or None when no answer came."""
        assert self._session is not None
        url, headers, body = request
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=limit),
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None


def _nothing() -> None:
    return None
