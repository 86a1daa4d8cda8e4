"""The active-task caps: how many tasks a provider lets one account run at once
(:class:`ActiveLimiter`), so that the client itself never causes a cap 429. Counting and waking
only: it must not import the session, the transport, the scheduler or the codecs.

BFL documents 24 active tasks per account and 6 for flux-kontext-max; ``Limits`` may adjust
them. A task counts from before its submit until its terminal state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import anyio

from ._config import Limits

__all__ = ["ActiveLimiter", "active_limiter", "provider_caps"]

#: Documented active-task caps: provider -> (cap for the account, caps per model).
_PROVIDER_CAPS: Mapping[str, tuple[int | None, Mapping[str, int]]] = {
    "bfl": (24, {"flux-kontext-max": 6}),
}


class ActiveLimiter:
    """Counts tasks active at the provider against its caps; waiters are woken on release."""

    def __init__(self, total: int | None, per_model: Mapping[str, int]) -> None:
        self._total = total or None
        self._per_model = {k: v for k, v in per_model.items() if v}
        self._active = 0
        self._by_model: Counter[str] = Counter()
        self._changed = anyio.Event()

    @property
    def active(self) -> int:
        return self._active

    def _fits(self, model: str) -> bool:
        if self._total is not None and self._active >= self._total:
            return False
        cap = self._per_model.get(model)
        return cap is None or self._by_model[model] < cap

    async def acquire(self, model: str) -> None:
        while not self._fits(model):
            await self._changed.wait()
        self.force(model)

    def force(self, model: str) -> None:
        """Count a task that is already active (a resumed one), even over the cap."""
        self._active += 1
        self._by_model[model] += 1

    def release(self, model: str) -> None:
        self._active -= 1
        self._by_model[model] -= 1
        self._changed.set()
        self._changed = anyio.Event()


def provider_caps(provider: str, limits: Limits) -> tuple[int | None, Mapping[str, int]]:
    """``provider``'s documented caps as ``limits`` adjust them: for the account, per model."""
    total_cap, model_caps = _PROVIDER_CAPS.get(provider, (None, {}))
    if limits.max_active_tasks is not None:
        total_cap = limits.max_active_tasks
    if limits.max_active_per_model is not None:
        model_caps = limits.max_active_per_model
    return total_cap, model_caps


def active_limiter(provider: str, limits: Limits) -> ActiveLimiter | None:
    """The limiter for ``provider``'s documented caps as ``limits`` adjust them (None: no cap)."""
    total_cap, model_caps = provider_caps(provider, limits)
    return ActiveLimiter(total_cap, model_caps) if (total_cap or model_caps) else None
