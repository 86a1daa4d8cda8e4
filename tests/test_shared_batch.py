"""The lines of a shared batch in a real ``redis-server`` (``RedisCoordinator.batch``): claims
under contention between several coordinators, take-over of a dead process's lines, lines given
back or dropped, and each line's result recorded once. A dead process is made by ending its lease
in Redis (no real time is waited)."""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import pytest
from redis.asyncio import from_url

from flux_async.errors import ConfigurationError, CoordinatorError
from flux_async.fleet import RedisCoordinator, SharedProgress

pytestmark = pytest.mark.anyio

HEADER = {"provider": "bfl", "requests": 300, "fingerprint": "f" * 64}


async def _coordinators(stack: AsyncExitStack, url: str, n: int) -> list[RedisCoordinator]:
    return [await stack.enter_async_context(RedisCoordinator(url, poll_interval=0.05)) for _ in range(n)]


async def _kill(url: str, process_id: str) -> None:
    """End a process's lease now, as a SIGKILL and its lease running out would."""
    raw = from_url(url, decode_responses=True)
    try:
        await raw.zadd("flux-async:{default}:procs", {process_id: 1})
    finally:
        await raw.aclose()


async def test_three_processes_racing_over_every_chunk_take_each_line_once(redis_url: str) -> None:
    async with AsyncExitStack() as stack:
        coords = await _coordinators(stack, redis_url, 3)
        batches = [c.batch("b1") for c in coords]
        for b in batches:
            stored, progress = await b.open(HEADER)
            assert stored == HEADER
            assert progress == SharedProgress(0, 0, 0)
        taken: list[list[int]] = [[], [], []]

        async def walk(k: int) -> None:
            # Every process walks the whole file in chunks of 7, as the batch does.
            for start in range(0, 300, 7):
                got, _done = await batches[k].claim(range(start, min(start + 7, 300)))
                taken[k].extend(got)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for k in range(3):
                tg.start_soon(walk, k)
        everything = sorted(taken[0] + taken[1] + taken[2])
        assert everything == list(range(300))  # each line once, none lost
        assert (await batches[0].progress()).claimed == 300


async def test_a_result_is_recorded_once_and_ends_the_claim(redis_url: str) -> None:
    async with AsyncExitStack() as stack:
        a, b = (c.batch("b2") for c in await _coordinators(stack, redis_url, 2))
        await a.open(HEADER)
        assert await a.claim([0, 1, 2]) == ([0, 1, 2], 0)
        assert await b.claim([0, 1, 2, 3]) == ([3], 0)  # held by a live process: not b's
        assert await a.finish(0, {"index": 0, "status": "succeeded"}, succeeded=True)
        assert await a.finish(1, {"index": 1, "status": "failed"}, succeeded=False)
        # A second record of a line (say after a lost lease) changes nothing.
        assert not await b.finish(0, {"index": 0, "status": "failed"}, succeeded=False)
        assert await b.claim([0, 1]) == ([], 2)  # done lines are nobody's
        progress = await b.progress()
        assert (progress.succeeded, progress.failed, progress.done, progress.claimed) == (1, 1, 2, 2)
        results = await b.results()
        assert results == {0: {"index": 0, "status": "succeeded"}, 1: {"index": 1, "status": "failed"}}
        # Reopening tells where the batch stands, and keeps the first header.
        stored, progress = await b.open({**HEADER, "requests": 1})
        assert stored == HEADER
        assert progress == SharedProgress(1, 1, 2)


async def test_lines_of_a_dead_process_are_taken_over_by_claim_and_by_sweep(redis_url: str) -> None:
    async with AsyncExitStack() as stack:
        a, b, c = (co.batch("b3") for co in await _coordinators(stack, redis_url, 3))
        await a.open(HEADER)
        assert await a.claim(range(10)) == (list(range(10)), 0)
        assert await c.claim(range(10, 14)) == ([10, 11, 12, 13], 0)
        # While a and c live, b takes nothing and counts what they hold.
        assert await b.sweep(limit=100) == ([], 14)
        await _kill(redis_url, a.coordinator.process_id)
        assert await b.claim([0, 1]) == ([0, 1], 0)
        taken, elsewhere = await b.sweep(limit=5)
        assert len(taken) == 5
        assert set(taken) <= set(range(2, 10))
        assert elsewhere == 4 + 3  # c's four, and the three over the limit
        taken2, elsewhere = await b.sweep(limit=100)
        assert sorted(taken + taken2) == list(range(2, 10))
        assert elsewhere == 4
        # The dead process's late record of a line it no longer holds is still the line's
        # first result: recorded once, the holder's claim ended.
        assert await a.finish(3, {"index": 3}, succeeded=True)
        assert not await b.finish(3, {"index": 3}, succeeded=True)


async def test_given_back_lines_go_to_the_running_processes_dropped_ones_to_the_next_run(redis_url: str) -> None:
    async with AsyncExitStack() as stack:
        a, b = (c.batch("b4") for c in await _coordinators(stack, redis_url, 2))
        await a.open(HEADER)
        assert await a.claim(range(6)) == (list(range(6)), 0)
        assert await b.release([0, 1], give=True) == 0  # not b's to release
        assert await a.release([0, 1], give=True) == 2
        assert await a.release([2], give=False) == 1
        taken, elsewhere = await b.sweep(limit=100)
        assert sorted(taken) == [0, 1]  # given back: taken now
        assert elsewhere == 3  # a still holds 3, 4, 5; line 2 is nobody's until a pass reaches it
        assert await b.claim([2]) == ([2], 0)


async def test_bad_batch_ids_and_a_missing_server_are_clear_errors(redis_url: str) -> None:
    async with RedisCoordinator(redis_url) as coord:
        for bad in ("", "a b", "x" * 101, "tab\t"):
            with pytest.raises(ConfigurationError, match="shared batch id"):
                coord.batch(bad)
    lone = RedisCoordinator("redis://127.0.0.1:1/0", timeout=0.5)
    with pytest.raises(CoordinatorError):
        async with lone:
            pass
