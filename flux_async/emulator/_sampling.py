"""Time and chance in the emulator: job-duration distributions, seeded draws and clocks.

Owns :class:`Duration` (sampled by inverse CDF from one uniform), :func:`uniforms` (the
seeded draws behind every task's fate), :class:`ManualClock` and :func:`wall_clock`. Imports
attrs and the standard library only: nothing from the rest of flux_async, and none of the
emulator's other modules (the scenario and the core build on this one, not the reverse).

Everything here is a pure function of its inputs except the clocks, so the same seed and the
same uniform give the same duration on every platform.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from collections.abc import Callable
from typing import Literal

import attrs

__all__ = ["Duration", "ManualClock", "non_negative", "uniforms", "wall_clock"]

_NORMAL = statistics.NormalDist()


def non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    """attrs validator: ``value >= 0`` (NaN fails too)."""
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Duration:
    """A distribution of job durations in seconds (before ``Scenario.time_scale``).

    Build one with :meth:`fixed`, :meth:`uniform` or :meth:`lognormal`; in JSON, a number means
    a fixed duration and an object names its ``kind`` (``{"kind": "lognormal", "median": 10,
    "sigma": 0.35}``). Sampling is by inverse CDF from one uniform draw, so the same draw always
    gives the same duration on every platform.
    """

    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    #: ``fixed``: the duration.
    seconds: float = attrs.field(default=0.0, validator=non_negative)
    #: ``uniform``: the bounds.
    low: float = attrs.field(default=0.0, validator=non_negative)
    high: float = attrs.field(default=0.0, validator=non_negative)
    #: ``lognormal``: the median and the sigma of the underlying normal.
    median: float = attrs.field(default=0.0, validator=non_negative)
    sigma: float = attrs.field(default=0.0, validator=non_negative)
    #: Optional upper bound applied to every sample (keeps log-normal tails finite).
    maximum: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "lognormal"):
            raise ValueError(f"unknown duration kind {self.kind!r}")
        if self.kind == "uniform" and self.high < self.low:
            raise ValueError("uniform duration needs low <= high")

    @classmethod
    def fixed(cls, seconds: float) -> Duration:
        """Every job takes ``seconds``."""
        return cls(kind="fixed", seconds=float(seconds))

    @classmethod
    def uniform(cls, low: float, high: float) -> Duration:
        """Durations spread evenly between ``low`` and ``high``."""
        return cls(kind="uniform", low=float(low), high=float(high))

    @classmethod
    def lognormal(cls, median: float, sigma: float, maximum: float | None = None) -> Duration:
        """Log-normal durations: ``median * exp(sigma * N(0, 1))``, optionally capped."""
        return cls(kind="lognormal", median=float(median), sigma=float(sigma), maximum=maximum)

    def sample(self, u: float) -> float:
        """The duration at quantile ``u`` (0 < u < 1)."""
        if self.kind == "fixed":
            value = self.seconds
        elif self.kind == "uniform":
            value = self.low + (self.high - self.low) * u
        else:
            value = self.median * math.exp(self.sigma * _NORMAL.inv_cdf(u)) if self.median else 0.0
        if self.maximum is not None:
            value = min(value, self.maximum)
        return value

    def typical(self) -> float:
        """The median duration: what a provider would quote as its estimate."""
        if self.kind == "fixed":
            value = self.seconds
        elif self.kind == "uniform":
            value = (self.low + self.high) / 2
        else:
            value = self.median
        return value if self.maximum is None else min(value, self.maximum)


class ManualClock:
    """A clock that only moves when told to: pass it as ``Emulator(clock=...)`` and call
    :meth:`advance` instead of sleeping. It reads as unix seconds (it starts at
    2026-01-01T00:00:00Z unless told otherwise), so timestamps in answers look real.

    Whatever must act at a given time (the emulator's webhook deliveries) subscribes
    (:meth:`subscribe`) to be told when the clock moves, instead of waiting in real time.
    """

    __slots__ = ("_listeners", "_now")

    def __init__(self, start: float = 1_767_225_600.0) -> None:
        self._now = float(start)
        self._listeners: list[Callable[[], None]] = []

    @property
    def now(self) -> float:
        """The time it reads; setting it moves the clock (and tells the subscribers)."""
        return self._now

    @now.setter
    def now(self, value: float) -> None:
        self._now = float(value)
        for listener in list(self._listeners):
            listener()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (from the thread that advances the clock) after every move."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener`` (nothing happens if it was not subscribed)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` and return the new time."""
        if seconds < 0:
            raise ValueError("a clock never goes back")
        self.now = self._now + seconds
        return self._now

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"


def uniforms(*parts: object) -> tuple[float, float, float, float]:
    """Four independent uniforms in (0, 1), a pure function of ``parts`` (blake2b)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=32).digest()
    scale = 1.0 / 18446744073709551616.0  # 2**-64
    return (
        (int.from_bytes(digest[0:8], "big") + 0.5) * scale,
        (int.from_bytes(digest[8:16], "big") + 0.5) * scale,
        (int.from_bytes(digest[16:24], "big") + 0.5) * scale,
        (int.from_bytes(digest[24:32], "big") + 0.5) * scale,
    )


def wall_clock() -> float:
    """The default emulator clock: unix seconds."""
    return time.time()
