"""The running asyncio loop's clock, read as cheaply as it can be."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["STOCK_LOOP_TIME", "loop_clock"]

#: The standard loops' ``time`` method, which returns ``time.monotonic()``: a loop whose class
#: has it can be read through ``time.monotonic()`` directly, without a Python call of its own.
STOCK_LOOP_TIME = asyncio.BaseEventLoop.time


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """What reads ``loop.time()``: ``time.monotonic`` itself on the standard loops, the loop's
    own method on any other (uvloop's, a test's), whose timers are set on its own clock."""
    return time.monotonic if type(loop).time is STOCK_LOOP_TIME else loop.time
