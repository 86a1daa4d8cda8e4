"""Shared test configuration.

Every async test runs on asyncio through anyio's pytest plugin. Hypothesis runs without its
per-example deadline: the machines are shared, and a slow example is not a wrong one.
"""

from __future__ import annotations

import os
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


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (in the configuration): two workers per CPU. Most tests wait on sockets and
    child processes rather than compute, so one worker per CPU leaves them idle (measured on
    2 CPUs: about 200 s with 2 workers, 165 s with 4, no better with 6)."""
    return 2 * (os.cpu_count() or 1)
