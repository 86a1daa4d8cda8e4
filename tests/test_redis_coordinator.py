"""The Redis coordinator against a real ``redis-server``: the account-wide caps, the shared
budget, idempotency claims and orphan adoption under contention between several coordinators
(each one a "process" of the account), a few real OS processes, lease expiry, and a Redis that
is not there. Contention is set up with events and counters; the only real time waited is a
lease of half a second running out.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
import redis
from _redis import RedisServer, redis_server_or_skip
from redis.asyncio import from_url

from flux_async.errors import CoordinatorError
from flux_async.fleet import RedisCoordinator

pytestmark = pytest.mark.anyio

MAX = "flux-kontext-max"


async def _coordinators(stack: AsyncExitStack, url: str, n: int, **kw: float) -> list[RedisCoordinator]:
    kw.setdefault("poll_interval", 0.05)
    return [await stack.enter_async_context(RedisCoordinator(url, **kw)) for _ in range(n)]


async def _expire_lease(url: str, process_id: str) -> None:
    """End a process's lease in Redis now, as its running out would (without waiting for it)."""
    raw = from_url(url, decode_responses=True)
    try:
        await raw.zadd("flux-async:{default}:procs", {process_id: 1})
    finally:
        await raw.aclose()


# -- active-task caps ----------------------------------------------------------------------------


async def test_caps_hold_across_four_processes(redis_url: str) -> None:
    async with AsyncExitStack() as stack:
        coords = await _coordinators(stack, redis_url, 4)
        go = anyio.Event()
        holding = peak_held = peak_counted = done = 0

        async def job(i: int) -> None:
            nonlocal holding, peak_held, peak_counted, done
            coord = coords[i % 4]
            await go.wait()
            _, counted = await coord.acquire_active("bfl", MAX, total=24, per_model=6, token=f"t{i}")
            holding += 1
            peak_held = max(peak_held, holding)
            peak_counted = max(peak_counted, counted)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            holding -= 1
            assert await coord.release_active("bfl", MAX, f"t{i}")
            done += 1

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(job, i)
            go.set()
        assert done == 50
        assert peak_counted == 6
        assert peak_held <= 6
        assert sum(c.statistics().slot_waits for c in coords) > 0  # they did contend
        # Nothing left held: a fresh acquirer gets the first slot.
        assert await coords[0].acquire_active("bfl", MAX, total=24, per_model=6, token="x") == (1, 1)


async def test_total_cap_counts_every_model(redis_url: str) -> None:
    async with RedisCoordinator(redis_url) as coord:
        await coord.acquire_active("bfl", "a", total=2, per_model=None, token="1")
        await coord.acquire_active("bfl", "b", total=2, per_model=None, token="2")
        with anyio.move_on_after(0.1) as scope:
            await coord.acquire_active("bfl", "c", total=2, per_model=None, token="3")
        assert scope.cancelled_caught
        # The same token again is the slot it holds (a call resent after a lost answer).
        assert await coord.acquire_active("bfl", "a", total=2, per_model=None, token="1") == (2, 1)


async def test_a_slot_token_belongs_to_one_process(redis_url: str) -> None:
    async with AsyncExitStack() as stack:
        a, b = await _coordinators(stack, redis_url, 2)
        await a.acquire_active("bfl", MAX, total=24, per_model=6, token="same")
        with pytest.raises(ValueError, match="unique to one submit"):
            await b.acquire_active("bfl", MAX, total=24, per_model=6, token="same")
        assert not await b.release_active("bfl", MAX, "same")  # not b's to free
        assert await a.release_active("bfl", MAX, "same")
        assert not await a.release_active("bfl", MAX, "same")


async def test_slots_of_a_dead_process_are_freed(redis_url: str) -> None:
    async with RedisCoordinator(redis_url, poll_interval=0.05) as live:
        async with RedisCoordinator(redis_url, lease_ttl=0.5) as doomed:
            for i in range(6):
                await doomed.acquire_active("bfl", MAX, total=24, per_model=6, token=f"d{i}")
            doomed._simulate_death()  # no more heartbeats; nothing deleted on exit
        started = time.monotonic()
        with anyio.fail_after(5):
            got = await live.acquire_active("bfl", MAX, total=24, per_model=6, token="l")
        assert got == (1, 1)  # all six were freed by the acquire's purge
        assert time.monotonic() - started < 3


async def test_bound_slot_is_freed_by_any_process_and_counted_once(redis_url: str) -> None:
    async with AsyncExitStack() as stack:
        a, b = await _coordinators(stack, redis_url, 2)
        await a.acquire_active("bfl", MAX, total=24, per_model=6, token="ka")
        assert await a.bind_active("ka", "task-1")
        # b attaches the same running task: its slot is dropped, the task counts once.
        await b.acquire_active("bfl", MAX, total=None, per_model=None, token="kb")
        assert not await b.bind_active("kb", "task-1")
        assert await b.release_task("task-1")  # b saw it end: a's slot is freed
        assert not await b.release_task("task-1")
        assert not await a.release_active("bfl", MAX, "ka")
        assert await a.acquire_active("bfl", MAX, total=24, per_model=6, token="n") == (1, 1)
        assert not await a.bind_active("unknown-token", "task-2")


# -- the shared budget ---------------------------------------------------------------------------


async def test_budget_is_shared_by_four_processes(redis_url: str) -> None:
    async with AsyncExitStack() as stack:
        coords = await _coordinators(stack, redis_url, 4)
        go = anyio.Event()
        results: list[bool] = []

        async def submit(coord: RedisCoordinator, i: int) -> None:
            await go.wait()
            results.append(await coord.reserve("bfl", f"{coord.process_id}-{i}", 0.04, cap=2.00))

        async with anyio.create_task_group() as tg:
            for coord in coords:
                for i in range(30):
                    tg.start_soon(submit, coord, i)
            go.set()
        assert len(results) == 120
        assert results.count(True) == 50
        assert await coords[0].spend("bfl") == (0.0, 2.0)


async def test_settle_and_release_arithmetic(redis_url: str) -> None:
    async with AsyncExitStack() as stack:
        a, b = await _coordinators(stack, redis_url, 2)
        assert await a.reserve("bfl", "k1", 0.08, cap=0.20)
        assert await b.reserve("bfl", "k2", 0.08, cap=0.20)
        assert not await b.reserve("bfl", "k3", 0.08, cap=0.20)  # 0.24 > 0.20: nothing held
        assert await a.reserve("bfl", "k1", 0.08, cap=0.20)  # held already: kept, not doubled
        assert await a.spend("bfl") == (0.0, 0.16)
        assert await b.settle_spend("bfl", "k1", 0.05, model=MAX)  # the provider's figure
        assert not await b.settle_spend("bfl", "k1", 0.05, model=MAX)  # once
        assert await a.spend("bfl") == (0.05, 0.08)
        assert await a.release("bfl", "k2")  # no task was made
        assert not await a.release("bfl", "k2")
        assert await a.spend("bfl") == (0.05, 0.0)
        assert await a.reserve("bfl", "k4", 0.04, cap=0.20)
        assert await a.settle_spend("bfl", "k4", None)  # as reserved
        assert await a.settle_spend("bfl", "k5", 0.0) is False  # never reserved
        assert await b.spend("bfl") == (0.09, 0.0)
        assert await b.spend("toapis") == (0.0, 0.0)  # per provider


async def test_reservations_of_a_dead_process_are_kept(redis_url: str) -> None:
    async with RedisCoordinator(redis_url, lease_ttl=0.5) as doomed:
        assert await doomed.reserve("bfl", "in-doubt", 1.50, cap=2.00)
        doomed._simulate_death()
    await _expire_lease(redis_url, doomed.process_id)
    async with RedisCoordinator(redis_url) as live:
        assert not await live.reserve("bfl", "next", 0.60, cap=2.00)
        assert await live.spend("bfl") == (0.0, 1.5)
        assert await live.settle_spend("bfl", "in-doubt", None, model="flux-kontext-pro")
        assert await live.spend("bfl") == (1.5, 0.0)


# -- idempotency claims --------------------------------------------------------------------------


async def test_one_claim_wins_and_every_waiter_gets_its_task(redis_url: str) -> None:
    async with AsyncExitStack() as stack:
        coords = await _coordinators(stack, redis_url, 10)
        go = anyio.Event()
        won: list[RedisCoordinator] = []
        lost = 0
        got: list[dict[str, str] | None] = []
        ref = {"provider": "bfl", "task_id": "task-7", "polling_url": "https://x.test/r?id=task-7"}

        async def submit(coord: RedisCoordinator) -> None:
            nonlocal lost
            await go.wait()
            if await coord.claim("user-key", ttl=30):
                won.append(coord)
            else:
                lost += 1
            if len(won) + lost == 10:
                claimed.set()  # every claim answered
            if won and won[-1] is coord:
                return
            got.append(await coord.wait_for("user-key", timeout=10))

        claimed = anyio.Event()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for coord in coords:
                    tg.start_soon(submit, coord)
                go.set()
                await claimed.wait()
                assert len(won) == 1
                await won[0].publish("user-key", ref)
        assert got == [ref] * 9
        # Later claimants find the task and do not claim.
        assert not await coords[3].claim("user-key", ttl=30)
        assert await coords[3].wait_for("user-key", timeout=1) == ref


async def test_a_dropped_claim_lets_a_waiter_take_over(redis_url: str) -> None:
    async with AsyncExitStack() as stack:
        a, b = await _coordinators(stack, redis_url, 2)
        assert await a.claim("k", ttl=30)
        assert await a.claim("k", ttl=30)  # its own claim again (a resent call)
        assert not await b.claim("k", ttl=30)
        waiting = anyio.Event()
        answers: list[dict[str, str] | None] = []

        async def waiter() -> None:
            waiting.set()
            answers.append(await b.wait_for("k", timeout=10))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await waiting.wait()
                assert not await b.drop_claim("k")  # not b's to drop
                assert await a.drop_claim("k")  # a failed before sending
        assert answers == [None]
        assert await b.claim("k", ttl=30)
        assert not await a.claim("k", ttl=30)
        with pytest.raises(TimeoutError):
            await a.wait_for("k", timeout=0.1)  # b is alive and still holds it


async def test_a_claim_dies_with_its_process_or_its_ttl(redis_url: str) -> None:
    async with AsyncExitStack() as stack:
        a, b = await _coordinators(stack, redis_url, 2)
        assert await a.claim("short", ttl=2.5)
        raw = from_url(redis_url, decode_responses=True)
        try:
            assert 0 < await raw.pttl("flux-async:{default}:claim:short") <= 2500
            await raw.pexpire("flux-async:{default}:claim:short", 0)  # its ttl is over
        finally:
            await raw.aclose()
        assert await b.claim("short", ttl=30)
    async with RedisCoordinator(redis_url) as c:
        assert await c.claim("short", ttl=30)  # b exited: its claim went with it


# -- task ownership and orphans ------------------------------------------------------------------


async def test_orphans_are_adopted_exactly_once(redis_url: str) -> None:
    refs = [{"provider": "bfl", "task_id": f"t{i}", "key": f"k{i}"} for i in range(5)]
    async with AsyncExitStack() as stack:
        b, c = await _coordinators(stack, redis_url, 2)
        async with RedisCoordinator(redis_url, lease_ttl=0.5) as doomed:
            for ref in refs:
                assert await doomed.own(ref)
            assert not await b.own(refs[0])  # a live process owns it
            assert await b.orphans() == []
            doomed._simulate_death()
        await _expire_lease(redis_url, doomed.process_id)
        found = await b.orphans(limit=10)
        assert sorted(found, key=lambda r: r["task_id"]) == refs
        adopted: Counter[str] = Counter()
        go = anyio.Event()

        async def adopter(coord: RedisCoordinator) -> None:
            await go.wait()
            for ref in await coord.orphans(limit=10):
                if await coord.adopt(ref["task_id"]):
                    adopted[ref["task_id"]] += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(adopter, b)
            tg.start_soon(adopter, c)
            go.set()
        assert adopted == Counter({f"t{i}": 1 for i in range(5)})
        assert await b.orphans() == []
        assert not await b.adopt("t0") or not await c.adopt("t0")
        assert await b.disown("t1")
        assert not await b.disown("t1")


async def test_tasks_of_a_process_that_exits_are_orphans(redis_url: str) -> None:
    async with RedisCoordinator(redis_url) as live:
        async with RedisCoordinator(redis_url) as leaving:
            await leaving.own({"provider": "bfl", "task_id": "left-running"})
        assert await live.orphans() == [{"provider": "bfl", "task_id": "left-running"}]
        assert await live.adopt("left-running")
        assert await live.disown("left-running")
        assert await live.orphans() == []


# -- leases --------------------------------------------------------------------------------------


async def test_a_lost_lease_continues_under_a_new_process_id(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with RedisCoordinator(redis_url) as coord:
        old = coord.process_id
        await coord.own({"provider": "bfl", "task_id": "mine"})
        await _expire_lease(redis_url, old)
        with caplog.at_level(logging.WARNING, logger="flux_async"):
            assert await coord.claim("k", ttl=30)
        assert coord.process_id != old
        assert coord.statistics().lease_losses == 1
        assert "expired" in caplog.text
        assert await coord.orphans() == [{"provider": "bfl", "task_id": "mine"}]
        assert await coord.adopt("mine")


async def test_heartbeat_keeps_a_short_lease_alive(redis_url: str) -> None:
    async with RedisCoordinator(redis_url, lease_ttl=0.3) as coord, RedisCoordinator(redis_url) as other:
        await coord.own({"provider": "bfl", "task_id": "watched"})
        with anyio.fail_after(5):
            # The heartbeat runs on the clock: what is under test is time passing.
            while coord.statistics().lease_renewals < 4:  # noqa: ASYNC110 (more than one lease)
                await anyio.sleep(0.05)
        assert await other.orphans() == []
        assert coord.statistics().lease_losses == 0


# -- Redis failing -------------------------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_redis_is_a_prompt_coordinator_error(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://worker:pa55-w0rd@127.0.0.1:{_closed_port()}/0"
    coord = RedisCoordinator(url, timeout=1.0)
    assert "pa55-w0rd" not in repr(coord)
    assert ":***@" in repr(coord)
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(CoordinatorError) as info:
        async with coord:
            pass
    assert time.monotonic() - started < 3
    assert "register this process" in str(info.value)
    assert info.value.action == "register this process"
    assert "pa55-w0rd" not in str(info.value)
    assert "pa55-w0rd" not in caplog.text


async def test_redis_stopping_under_a_live_coordinator(caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(redis_server_or_skip())  # its own: the shared one must stay up
    server.start()
    try:
        with caplog.at_level(logging.DEBUG, logger="flux_async"):
            async with RedisCoordinator(server.url, timeout=1.0, lease_ttl=0.3) as coord:
                assert await coord.reserve("bfl", "k", 0.04, cap=2.0)
                server.stop()
                started = time.monotonic()
                with pytest.raises(CoordinatorError, match=r"reserve \$0\.0400 for a bfl job"):
                    await coord.reserve("bfl", "k2", 0.04, cap=2.0)
                with pytest.raises(CoordinatorError, match="take an active-task slot for bfl"):
                    await coord.acquire_active("bfl", MAX, total=24, per_model=6, token="t")
                with pytest.raises(CoordinatorError, match="claim idempotency key"):
                    await coord.claim("k", ttl=30)
                with pytest.raises(CoordinatorError, match="read the bfl spend"):
                    await coord.spend("bfl")
                assert time.monotonic() - started < 5
                with anyio.fail_after(5):
                    # The heartbeat's next renewal fails too, without ending the block.
                    while coord.statistics().failures < 6:  # noqa: ASYNC110 (on the clock)
                        await anyio.sleep(0.05)
            # Leaving with Redis down only logs: the lease expires by itself.
        assert "expires by itself" in caplog.text
    finally:
        server.close()


async def test_bad_configuration_is_refused_up_front() -> None:
    from flux_async.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="namespace"):
        RedisCoordinator("redis://127.0.0.1/0", namespace="a{b}")
    with pytest.raises(ConfigurationError, match="lease_ttl"):
        RedisCoordinator("redis://127.0.0.1/0", lease_ttl=0)
    with pytest.raises(ConfigurationError, match="not a Redis URL") as info:
        async with RedisCoordinator("http://u:topsecret@host/0"):
            pass
    assert "topsecret" not in str(info.value)


def test_importing_flux_async_does_not_import_redis() -> None:
    # The fleet package is the one that needs the extra; the library itself never loads it.
    code = "import sys, flux_async, flux_async.session; assert 'redis' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- real processes ------------------------------------------------------------------------------

_WORKER = str(Path(__file__).with_name("_fleet_worker.py"))


def _worker(url: str, mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen(
        [sys.executable, _WORKER, url, mode], stdout=subprocess.PIPE, text=True, env=env
    )


def test_caps_and_budget_across_os_processes(redis_url: str) -> None:
    workers = [_worker(redis_url, "share") for _ in range(4)]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        with redis.Redis.from_url(redis_url) as raw:
            raw.rpush("go", *["go"] * 4)
        reports = []
        for worker in workers:
            out, _ = worker.communicate(timeout=60)
            assert worker.returncode == 0
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert sum(r["reserved"] for r in reports) == 50
    assert max(r["peak"] for r in reports) <= 6


def test_slots_of_a_killed_process_are_reclaimed(redis_url: str) -> None:
    worker = _worker(redis_url, "hold")
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "held"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()

    async def acquire() -> tuple[int, int]:
        async with RedisCoordinator(redis_url, poll_interval=0.05) as coord:
            with anyio.fail_after(5):
                return await coord.acquire_active("bfl", "held-model", total=None, per_model=6, token="n")

    assert anyio.run(acquire) == (1, 1)
