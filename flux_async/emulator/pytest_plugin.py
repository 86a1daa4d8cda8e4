"""pytest fixtures for testing code against the flux_async emulator.

Registered as the ``flux_async_emulator`` pytest11 entry point, so it is active wherever
flux_async is installed. Importing it is cheap and has no side effects: the emulator itself
(and aiohttp) is imported only when a fixture is first used.

Fixtures:

- ``flux_emulator`` (async, function scope): a running :class:`~flux_async.emulator.Emulator`
  on 127.0.0.1 and a free port. Use it from async tests run by anyio's pytest plugin
  (``@pytest.mark.anyio``) on the asyncio backend::

      @pytest.mark.anyio
      async def test_generate(flux_emulator):
          async with flux_async.Session("toapis", api_key=DEFAULT_API_KEY,
                                        base_url=flux_emulator.base_url("toapis")) as s:
              ...

- ``flux_emulator_scenario``: the :class:`~flux_async.emulator.Scenario` it starts with
  (default: ``Scenario()``, a healthy, instant provider). Override it in a module or a
  conftest, or parametrise it indirectly.
- ``flux_emulator_clock``: the emulator's clock (default ``None``: real time). Override it to
  return a :class:`~flux_async.emulator.ManualClock` to drive task timelines by hand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from flux_async.emulator import Emulator, Scenario

__all__ = ["flux_emulator", "flux_emulator_clock", "flux_emulator_scenario"]


@pytest.fixture
def flux_emulator_scenario() -> Scenario:
    """The scenario ``flux_emulator`` starts with; override to change it."""
    from flux_async.emulator import Scenario

    return Scenario()


@pytest.fixture
def flux_emulator_clock() -> Callable[[], float] | None:
    """The clock ``flux_emulator`` runs on; ``None`` means real time."""
    return None


@pytest.fixture
async def flux_emulator(
    flux_emulator_scenario: Scenario,
    flux_emulator_clock: Callable[[], float] | None,
) -> AsyncIterator[Emulator]:
    """A running emulator, stopped after the test."""
    from flux_async.emulator import Emulator

    async with Emulator(flux_emulator_scenario, clock=flux_emulator_clock) as emulator:
        yield emulator
