"""Shared test configuration.

Every async test runs on asyncio through anyio's pytest plugin. Hypothesis runs without its
per-example deadline: the machines are shared, and a slow example is not a wrong one.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "flux_async",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("flux_async")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
