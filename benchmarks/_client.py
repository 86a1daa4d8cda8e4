"""Helpers for the client side of a measured run (imported inside the client's own process).

Standard library only: the floor and the fixed-interval pollers must not load the library.
"""

from __future__ import annotations

import gc
import os
import resource
import time
from typing import Any

#: The model every scenario asks for (toapis, Flux Kontext pro).
MODEL = "flux-kontext-pro"
PROVIDER = "toapis"
GENERATIONS = "/v1/images/generations"


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emulator_key() -> str:
    """The emulator's test key (never printed)."""
    from flux_async.emulator import DEFAULT_API_KEY

    return str(DEFAULT_API_KEY)


class Meter:
    """CPU and wall time of a measured section, from a clean start (a full collection first, so
    garbage left by imports is not charged to the workload)."""

    def __init__(self) -> None:
        self.cpu0 = self.cpu1 = 0.0
        self.wall0 = self.wall1 = 0.0

    def __enter__(self) -> Meter:
        gc.collect()
        self.cpu0 = cpu_seconds()
        self.wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall1 = time.perf_counter()
        self.cpu1 = cpu_seconds()

    @property
    def cpu(self) -> float:
        return self.cpu1 - self.cpu0

    @property
    def wall(self) -> float:
        return self.wall1 - self.wall0

    def as_dict(self) -> dict[str, Any]:
        return {"cpu_s": self.cpu, "wall_s": self.wall, "pid": os.getpid()}
