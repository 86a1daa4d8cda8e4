"""The test Redis server itself: it answers, and each test gets an empty database."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

pytestmark = pytest.mark.anyio


async def test_the_redis_server_answers_and_starts_empty(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.ping()
        assert await client.dbsize() == 0
        await client.set("flux-async:probe", "1")
        assert await client.get("flux-async:probe") == b"1"
    finally:
        await client.aclose()
