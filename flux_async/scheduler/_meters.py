"""The driver's meters: the polls-per-second budget and the lag histogram.

Small mutable counters with no clock of their own: the driver passes every time in. Pure: no
event loop, no I/O; nothing from the session, transport or codecs.
"""

from __future__ import annotations

import bisect
import collections
import math

from ._timing import EPS

__all__ = ["LagHistogram", "PollBudget"]


class PollBudget:
    """At most ``n`` poll starts in any window of ``window`` seconds (``n / window`` ≤ the rate)."""

    __slots__ = ("starts", "window")

    def __init__(self, rate: float) -> None:
        n = max(1, math.floor(rate + EPS))
        self.window = max(1.0, n / rate) + 1e-6  # a hair over, for closed windows too
        self.starts: collections.deque[float] = collections.deque(maxlen=n)

    def next_start(self) -> float:
        starts = self.starts
        if len(starts) < (starts.maxlen or 0):
            return -math.inf
        return starts[0] + self.window


class LagHistogram:
    """Log-spaced histogram of lags from 0.1 ms to ~100 s: p50/p99 in O(1) memory."""

    __slots__ = ("counts", "max")

    _EDGES: tuple[float, ...] = tuple(1e-4 * 1.25**i for i in range(63))

    def __init__(self) -> None:
        self.counts = [0] * (len(self._EDGES) + 1)
        self.max = 0.0

    def add(self, lag: float) -> None:
        if lag < 0.0:
            lag = 0.0
        self.counts[bisect.bisect_left(self._EDGES, lag)] += 1
        if lag > self.max:
            self.max = lag

    def quantile(self, q: float) -> float:
        total = sum(self.counts)
        if total == 0:
            return 0.0
        rank = q * total
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank and count:
                return self.max if i >= len(self._EDGES) else min(self._EDGES[i], self.max)
        return self.max
