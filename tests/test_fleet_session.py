"""Sessions of several processes sharing one account through a coordinator (real Redis, the
emulator over sockets): the account-wide caps, the shared budget, one task per idempotency key
across processes, orphaned tasks adopted, and what a Redis failure does. Each "process" is a
session with a coordinator of its own (its own Redis connection and process lease); the
emulator's counters and the sessions' statistics tell what happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest
from _redis import RedisServer, redis_server_or_skip
from redis.asyncio import from_url

from flux_async import (
    BudgetExceededError,
    CoordinatorError,
    GenerationRequest,
    LedgerError,
    Limits,
    PollPolicy,
    Session,
)
from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, Scenario
from flux_async.fleet import RedisCoordinator

pytestmark = pytest.mark.anyio

FAST = PollPolicy(first_poll=0.05, min_interval=0.02, quantum=0.01, max_interval=0.1)


def requests(n: int, tag: str, model: str = "flux-kontext-pro") -> list[GenerationRequest]:
    return [GenerationRequest(model=model, prompt=f"{tag} {i}") for i in range(n)]


@asynccontextmanager
async def fleet(
    emu: Emulator, url: str, n: int, provider: str = "bfl", **session: object
) -> AsyncIterator[list[Session]]:
    """``n`` sessions, each with a coordinator of its own, on one account."""
    async with AsyncExitStack() as stack:
        sessions = []
        for _ in range(n):
            coordinator = RedisCoordinator(url, poll_interval=0.05)
            s = Session(
                provider, api_key=DEFAULT_API_KEY, base_url=emu.base_url(provider),
                poll_policy=FAST, coordinator=coordinator, **session,  # type: ignore[arg-type]
            )
            sessions.append(await stack.enter_async_context(s))
        yield sessions


async def run_all(sessions: list[Session], batches: list[list[GenerationRequest]]) -> list[list[object]]:
    results: list[list[object]] = [[] for _ in sessions]

    async def one(i: int) -> None:
        try:
            async for outcome in sessions[i].as_completed(batches[i]):
                results[i].append(outcome)
        except BudgetExceededError as exc:
            results[i].append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(len(sessions)):
            tg.start_soon(one, i)
    return results


async def test_four_processes_never_pass_the_account_cap(redis_url: str) -> None:
    # BFL allows 6 kontext-max tasks per account: four sessions of one account share them.
    scenario = Scenario(seed=2, duration=Duration.fixed(0.15))
    with anyio.fail_after(60):
        async with Emulator(scenario) as emu, fleet(emu, redis_url, 4) as sessions:
            batches = [requests(30, f"w{i}", "flux-kontext-max") for i in range(4)]
            results = await run_all(sessions, batches)
            data = emu.stats()
    assert all(len(r) == 30 for r in results)
    assert all(o.ok for r in results for o in r)  # type: ignore[attr-defined]
    assert data["tasks_created"] == 120
    assert data["active_high_water"]["bfl/flux-kontext-max"] == 6
    assert data["rate_limited"]["cap"] == 0


async def test_a_budget_is_shared_by_every_process(redis_url: str) -> None:
    # $2.00 for the account, Kontext pro at $0.04: 50 tasks, whichever process makes them.
    scenario = Scenario(seed=2, duration=Duration.fixed(0.05))
    with anyio.fail_after(60):
        async with Emulator(scenario) as emu, fleet(
            emu, redis_url, 4, limits=Limits(max_spend_usd=2.0)
        ) as sessions:
            results = await run_all(sessions, [requests(30, f"b{i}") for i in range(4)])
            created = emu.stats()["tasks_created"]
            raw = from_url(redis_url, decode_responses=True)
            try:
                spend = await raw.hgetall("flux-async:{default}:spend:bfl")
            finally:
                await raw.aclose()
    assert created == 50
    succeeded = [o for r in results for o in r if getattr(o, "ok", False)]
    assert len(succeeded) == 50
    # Every process was stopped by the shared budget, not by its own.
    assert all(isinstance(r[-1], BudgetExceededError) for r in results)
    assert int(spend["settled"]) + int(spend.get("reserved", 0)) <= 2_000_000


async def test_one_idempotency_key_in_two_processes_at_once_is_one_task(redis_url: str) -> None:
    scenario = Scenario(seed=2, duration=Duration.fixed(0.1))
    request = GenerationRequest(model="flux-kontext-pro", prompt="a kite", idempotency_key="order-1234")
    with anyio.fail_after(30):
        async with Emulator(scenario) as emu, fleet(emu, redis_url, 2) as (a, b):
            jobs = []

            async def submit(session: Session) -> None:
                jobs.append(await session.submit(request))

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit, a)
                tg.start_soon(submit, b)
            results = [await job.result() for job in jobs]
            data = emu.stats()
    assert data["tasks_created"] == 1
    assert data["requests"]["submit"] == 1
    assert jobs[0].task_id == jobs[1].task_id
    assert all(r.images for r in results)
    assert a.statistics().deduplicated + b.statistics().deduplicated == 1


async def test_the_tasks_of_a_process_that_died_are_adopted_and_downloaded(redis_url: str, tmp_path: Path) -> None:
    scenario = Scenario(seed=2, duration=Duration.fixed(1.0))
    out = tmp_path / "adopted"
    out.mkdir()
    with anyio.fail_after(60):
        async with Emulator(scenario) as emu:
            dying = RedisCoordinator(redis_url, poll_interval=0.05, lease_ttl=0.6)
            async with Session(
                "bfl", api_key=DEFAULT_API_KEY, base_url=emu.base_url("bfl"), poll_policy=FAST,
                coordinator=dying,
            ) as worker:
                jobs = [await worker.submit(r) for r in requests(5, "orphan")]
                dying._simulate_death()  # like SIGKILL: no more lease renewals, nothing cleaned
            survivor = RedisCoordinator(redis_url, poll_interval=0.05, lease_ttl=0.6)
            async with Session(
                "bfl", api_key=DEFAULT_API_KEY, base_url=emu.base_url("bfl"), poll_policy=FAST,
                coordinator=survivor, adopt_download_to=out,
            ) as heir:
                # The dead process's lease runs out (0.6 s), then the heir adopts, polls and
                # downloads: waited for by its files, at most the test's bound.
                while len(list(out.iterdir())) < 5:  # noqa: ASYNC110 - files, not an event
                    await anyio.sleep(0.05)
                stats = heir.statistics()
            data = emu.stats()
    assert stats.adopted_tasks == 5
    assert data["tasks_created"] == 5
    assert data["requests"]["submit"] == 5  # adopted, never sent again
    assert sorted(p.name.split(".")[0] for p in out.iterdir()) == sorted(j.task_id for j in jobs)


async def test_no_submit_without_redis(redis_url: str) -> None:
    own = RedisServer(redis_server_or_skip())
    own.start()
    try:
        async with Emulator(Scenario(seed=2, duration=Duration.fixed(0.05))) as emu:
            coordinator = RedisCoordinator(own.url, poll_interval=0.05, timeout=1.0)
            async with Session(
                "bfl", api_key=DEFAULT_API_KEY, base_url=emu.base_url("bfl"), poll_policy=FAST,
                coordinator=coordinator, limits=Limits(max_spend_usd=5.0),
            ) as session:
                first = await session.submit(requests(1, "before")[0])
                own.stop()
                with anyio.fail_after(20), pytest.raises(CoordinatorError):
                    await session.submit(requests(1, "after")[0])
                # The task accepted before the failure is still finished here.
                with anyio.fail_after(20):
                    result = await first.result()
            data = emu.stats()
    finally:
        own.close()
    assert result.images
    assert data["requests"]["submit"] == 1


async def test_a_coordinator_that_cannot_reach_redis_stops_the_session_before_anything_is_sent() -> None:
    with socket_closed() as url:
        async with Emulator(Scenario()) as emu:
            session = Session(
                "bfl", api_key=DEFAULT_API_KEY, base_url=emu.base_url("bfl"),
                coordinator=RedisCoordinator(url, timeout=1.0),
            )
            # The shared ledger is opened first: it is the one to say Redis cannot be reached.
            with anyio.fail_after(20), pytest.raises((CoordinatorError, LedgerError)) as caught:
                async with session:
                    pass
            assert "s3cret" not in str(caught.value)
            assert emu.stats()["requests"]["submit"] == 0


def socket_closed() -> _ClosedPort:
    return _ClosedPort()


class _ClosedPort:
    """A Redis URL (with a password) on a loopback port nothing listens on."""

    def __enter__(self) -> str:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return f"redis://:s3cret@127.0.0.1:{port}/0"

    def __exit__(self, *exc: object) -> None:
        return None


async def test_a_session_opens_and_closes_the_shared_ledger_and_counts_what_it_holds(redis_url: str) -> None:
    # A first process spends; a second one's session, on the same account, starts with it.
    scenario = Scenario(seed=2, duration=Duration.fixed(0.05))
    async with Emulator(scenario) as emu:
        for round_ in range(2):
            coordinator = RedisCoordinator(redis_url, poll_interval=0.05)
            session = Session(
                "bfl", api_key=DEFAULT_API_KEY, base_url=emu.base_url("bfl"), poll_policy=FAST,
                coordinator=coordinator,
            )
            ledger = session.ledger
            assert not getattr(ledger, "is_open")  # noqa: B009 - a RedisLedger, not opened yet
            async with session:
                assert getattr(ledger, "is_open")  # noqa: B009
                if round_ == 0:
                    await session.generate(model="flux-kontext-pro", prompt="a kite")
                else:
                    stats = session.statistics()
            assert not getattr(ledger, "is_open")  # noqa: B009
    # The first round's job, settled in the shared ledger, is counted by the second session.
    assert stats.carried_over_usd > 0
