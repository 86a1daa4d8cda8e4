"""Shared test configuration.

Every async test runs on asyncio through anyio's pytest plugin. Hypothesis runs without its
per-example deadline: the machines are shared, and a slow example is not a wrong one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _redis import RedisServer, redis_server_or_skip
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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port for the whole test session (started on first
    use; skipped where none is installed, a failure in CI)."""
    server = RedisServer(redis_server_or_skip())
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of an empty Redis database (flushed before each test)."""
    redis_server.flush()
    return redis_server.url
