"""Cancellation loses nothing that was paid for and leaves nothing behind.

Cancelling a consumer mid-batch, breaking out of the loop, or cancelling the whole ``Session``
(while POSTs are on the wire, tasks are running and results are waiting to be read) must leave
no asyncio task and no connection behind, and every task the emulator created must be either
delivered to the caller or listed in ``session.statistics().abandoned_tasks``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from flux_async import GenerationRequest, Outcome
from flux_async.emulator import Duration, Emulator, ManualClock, Scenario
from flux_async.retry import RetryPolicy
from flux_async.scheduler import PollPolicy
from flux_async.session import Job, Limits, Session

KEY = "cancellation-key"
PROVIDERS = ("toapis", "apimart", "bfl")
FAST = PollPolicy(
    target_delay=0.02, first_poll=0.01, min_interval=0.005, quantum=0.005, max_interval=0.05
)
JOBS = 40


def _pending_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if not task.done()}


def _requests(n: int, tag: str = "cove") -> list[GenerationRequest]:
    return [GenerationRequest(model="flux-kontext-pro", prompt=f"{tag} {i}") for i in range(n)]


def _check_accounting(data: Any, delivered: set[str], session: Session) -> set[str]:
    """Every created task is delivered or abandoned (never both); returns the abandoned ids."""
    created = {task["id"] for task in data["tasks"]}
    abandoned = {ref.task_id for ref in session.statistics().abandoned_tasks}
    assert data["duplicate_submits"] == 0
    assert not delivered & abandoned
    missing = created - delivered - abandoned
    assert not missing, f"{len(missing)} paid task(s) neither delivered nor abandoned: {missing}"
    assert abandoned <= created
    return abandoned


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("how", ["cancel the consumer", "break out of the loop", "cancel the session"])
@pytest.mark.parametrize("connections", [64, 2], ids=["pool", "crowded pool"])
async def test_stopping_a_batch_mid_flight_loses_no_task_and_leaks_nothing(
    provider: str, how: str, connections: int, caplog: pytest.LogCaptureFixture
) -> None:
    # With a crowded pool (4 submits and the polls on 2 connections) the polls wait for a
    # connection by turns, handed on from the POSTs' ends, while the batch is stopped.
    caplog.set_level(logging.WARNING, logger="flux_async")
    before = _pending_tasks()
    # Every request takes 20 ms at the server, so submits are on the wire at any moment; job
    # durations straddle the moment the batch is stopped.
    scenario = Scenario(seed=4, api_keys=(KEY,), latency=0.02, duration=Duration.uniform(0.0, 0.4))
    limits = Limits(max_concurrent_submits=4, max_outstanding=12, max_connections=connections)
    got: list[Outcome] = []
    with anyio.fail_after(20):
        async with Emulator(scenario) as emu:
            session = Session(provider, api_key=KEY, base_url=emu.base_url(provider),
                              poll_policy=FAST, limits=limits)
            three = anyio.Event()
            with anyio.CancelScope() as session_scope:
                async with session:
                    transport = session._net()

                    async def consume(scope: anyio.CancelScope) -> None:
                        with scope:
                            async for outcome in session.as_completed(_requests(JOBS)):
                                got.append(outcome)
                                if len(got) == 3:
                                    three.set()
                                    if how == "break out of the loop":
                                        break

                    consumer = anyio.CancelScope()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(consume, consumer)
                        await three.wait()
                        if how == "cancel the consumer":
                            consumer.cancel()
                        elif how == "cancel the session":
                            session_scope.cancel()
            assert len(got) >= 3
            assert session_scope.cancelled_caught == (how == "cancel the session")
            submits_at_close = emu.stats()["requests"]["submit"]
        data = emu.stats()
    leftover = _pending_tasks() - before

    delivered = {o.task_id for o in got if o.task_id is not None}
    abandoned = _check_accounting(data, delivered, session)
    assert len(delivered) == len(got)
    # The batch really stopped early: most inputs were never submitted...
    assert submits_at_close < JOBS
    # ...nothing was sent after the session closed...
    assert data["requests"]["submit"] == submits_at_close
    # ...and the accepted, undelivered tasks are named in a warning.
    if abandoned:
        assert any(ref in caplog.text for ref in abandoned)
    assert transport.statistics().open_connections == 0
    # Tasks still running at the provider when the session closed are among the abandoned.
    assert {ref.task_id for ref in session.statistics().outstanding_tasks} <= abandoned
    assert not leftover, leftover


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cancelling_the_session_with_submits_on_the_wire_records_them(provider: str) -> None:
    # Every submit takes 50 ms; the session is cancelled while all four are in flight: each
    # POST is still answered (it is shielded) and its task listed as abandoned.
    scenario = Scenario(seed=2, api_keys=(KEY,), latency=0.05, duration=Duration.fixed(30))
    clock = ManualClock()
    before = _pending_tasks()
    with anyio.fail_after(15):
        async with Emulator(scenario, clock=clock) as emu:
            session = Session(provider, api_key=KEY, base_url=emu.base_url(provider),
                              poll_policy=FAST, limits=Limits(max_concurrent_submits=4))
            with anyio.CancelScope() as scope:
                async with session, anyio.create_task_group() as tg:
                    transport = session._net()
                    send = transport.send
                    posts = 0
                    all_sent = anyio.Event()

                    async def spy(request: Any, **kwargs: Any) -> Any:
                        nonlocal posts
                        if request.method == "POST":
                            posts += 1
                            if posts == 4:
                                all_sent.set()
                        return await send(request, **kwargs)

                    transport.send = spy  # type: ignore[method-assign]
                    for request in _requests(4, "wire"):
                        tg.start_soon(session.generate, request)
                    # Cancel once all four POSTs are being sent (each waits out its latency).
                    await all_sent.wait()
                    scope.cancel()
        data = emu.stats()
    assert data["tasks_created"] == 4
    _check_accounting(data, set(), session)
    assert len(session.statistics().abandoned_tasks) == 4
    assert transport.statistics().open_connections == 0
    assert not _pending_tasks() - before


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("how", ["cancel the consumer", "cancel the session"])
async def test_stopping_a_batch_with_its_submits_on_the_wire_records_them(provider: str, how: str) -> None:
    # The batch's submitters shield their POSTs with one cancel scope each (raised per POST):
    # stopped while all four POSTs are in flight, each is still answered and its task listed.
    scenario = Scenario(seed=2, api_keys=(KEY,), latency=0.05, duration=Duration.fixed(30))
    clock = ManualClock()
    before = _pending_tasks()
    with anyio.fail_after(15):
        async with Emulator(scenario, clock=clock) as emu:
            session = Session(provider, api_key=KEY, base_url=emu.base_url(provider),
                              poll_policy=FAST, limits=Limits(max_concurrent_submits=4))
            with anyio.CancelScope() as session_scope:
                async with session, anyio.create_task_group() as tg:
                    transport = session._net()
                    send = transport.send
                    posts = 0
                    all_sent = anyio.Event()

                    async def spy(request: Any, **kwargs: Any) -> Any:
                        nonlocal posts
                        if request.method == "POST":
                            posts += 1
                            if posts == 4:
                                all_sent.set()
                        return await send(request, **kwargs)

                    transport.send = spy  # type: ignore[method-assign]
                    consumer = anyio.CancelScope()

                    async def consume() -> None:
                        with consumer:
                            async for _ in session.as_completed(_requests(4, "batch-wire")):
                                pass

                    tg.start_soon(consume)
                    await all_sent.wait()
                    if how == "cancel the consumer":
                        consumer.cancel()
                    else:
                        session_scope.cancel()
        data = emu.stats()
    assert data["tasks_created"] == 4
    _check_accounting(data, set(), session)
    assert len(session.statistics().abandoned_tasks) == 4
    assert transport.statistics().open_connections == 0
    assert not _pending_tasks() - before


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_cancelled_generate_call_leaves_its_task_listed(provider: str) -> None:
    clock = ManualClock()
    scenario = Scenario(seed=1, api_keys=(KEY,), duration=Duration.fixed(10))
    with anyio.fail_after(10):
        async with Emulator(scenario, clock=clock) as emu:
            async with Session(provider, api_key=KEY, base_url=emu.base_url(provider),
                               poll_policy=FAST) as session:
                accepted = anyio.Event()
                jobs: list[Job] = []
                submit = session.submit

                async def spy(request: GenerationRequest) -> Job:
                    job = await submit(request)
                    jobs.append(job)
                    accepted.set()
                    return job

                session.submit = spy  # type: ignore[method-assign]
                async with anyio.create_task_group() as tg:
                    tg.start_soon(session.generate, _requests(1)[0])
                    await accepted.wait()
                    tg.cancel_scope.cancel()  # the caller gives up while the task runs
                clock.advance(10)  # the task completes at the provider...
                await jobs[0].wait()  # ...and the session notices
            data = emu.stats()
    _check_accounting(data, set(), session)


@pytest.mark.anyio
async def test_cancelled_during_the_lookup_of_a_lost_submit_reply() -> None:
    lookup_pending = anyio.Event()

    async def sleep(seconds: float) -> None:
        if seconds == 1.0:  # the wait before looking the lost submit up (jitter "none")
            lookup_pending.set()
        await anyio.sleep(seconds)

    policy = RetryPolicy(base_delay=1.0, max_delay=1.0, jitter="none")
    with anyio.fail_after(10):
        async with Emulator(Scenario(api_keys=(KEY,))) as emu:
            emu.fail_next("submit", "drop_after_create", provider="toapis")
            session = Session("toapis", api_key=KEY, base_url=emu.base_url("toapis"),
                              poll_policy=FAST, retry_policy=policy, sleep=sleep)

            async def consume() -> None:
                async for _ in session.as_completed(_requests(1, "lost")):
                    pass

            async with session, anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await lookup_pending.wait()
                tg.cancel_scope.cancel()
            data = emu.stats()
    assert data["tasks_created"] == 1
    stats = session.statistics()
    known = {ref.task_id for ref in stats.abandoned_tasks}
    assert {task["id"] for task in data["tasks"]} <= known or stats.uncertain_submits == 1


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_closing_the_session_under_an_open_batch_lists_every_accepted_task(
    provider: str,
) -> None:
    clock = ManualClock()
    scenario = Scenario(seed=4, api_keys=(KEY,), duration=Duration.fixed(10))
    refs: list[Any] = []
    all_accepted = anyio.Event()

    def on_submit(index: int, ref: Any) -> None:
        refs.append(ref)
        if len(refs) == 3:
            all_accepted.set()

    with anyio.fail_after(10):
        async with Emulator(scenario, clock=clock) as emu:
            session = Session(provider, api_key=KEY, base_url=emu.base_url(provider),
                              poll_policy=FAST)
            async with session:
                # The caller keeps the iterator (to read more later, say) and reads one result.
                stream = session.as_completed(_requests(3), on_submit=on_submit)
                async with anyio.create_task_group() as tg:
                    first: list[Outcome] = []

                    async def read_one() -> None:
                        first.append(await stream.__anext__())

                    tg.start_soon(read_one)
                    await all_accepted.wait()
                    jobs = [session.resume(ref) for ref in refs]  # the batch's own jobs
                    clock.advance(10)
                    for job in jobs:
                        await job.wait()  # all three finished: two wait, unread, in the batch
            data = emu.stats()
            try:
                assert data["tasks_created"] == 3
                _check_accounting(data, {first[0].task_id or ""}, session)
            finally:
                await stream.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("room", [2, 50], ids=["parked for room", "posting"])
async def test_closing_the_session_under_a_batch_still_submitting_stops_its_submitters(
    provider: str, room: int
) -> None:
    # A batch's submitters are shielded from every cancellation from outside; the batch
    # cancels them itself when it is cancelled. The caller keeps the iterator open and leaves
    # the session while inputs remain: with little room the submitters are parked for it (they
    # must be woken by the cancellation, or the close never ends); with room both have a POST
    # on the wire, answered only once the batch was cancelled: each is finished and its task
    # recorded, and then no other POST is sent.
    scenario = Scenario(seed=5, api_keys=(KEY,), duration=Duration.fixed(0))
    limits = Limits(max_concurrent_submits=2, max_outstanding=room)
    before = _pending_tasks()
    held = 0
    both_held = anyio.Event()
    release = anyio.Event()
    with anyio.fail_after(10):
        async with Emulator(scenario) as emu:
            session = Session(provider, api_key=KEY, base_url=emu.base_url(provider),
                              poll_policy=FAST, limits=limits)
            stream = session.as_completed(_requests(12, "close"))
            async with session:
                transport = session._net()
                send = transport.send
                posts = 0

                async def spy(request: Any, **kwargs: Any) -> Any:
                    nonlocal posts, held
                    if request.method == "POST":
                        posts += 1
                        if posts > 1 and room > 2:  # on the wire until the batch is cancelled
                            held += 1
                            if held == 2:
                                both_held.set()
                            await release.wait()
                    return await send(request, **kwargs)

                transport.send = spy  # type: ignore[method-assign]
                first = await stream.__anext__()
                if room > 2:
                    await both_held.wait()
                    (batch,) = session._batches
                    cancel_submitters = batch._cancel_submitters

                    def cancel_then_answer() -> None:
                        cancel_submitters()
                        release.set()

                    batch._cancel_submitters = cancel_then_answer  # type: ignore[method-assign]
                posts_at_close = posts
            data = emu.stats()
            try:
                assert posts < 12  # the batch stopped early
                assert data["requests"]["submit"] == posts_at_close  # nothing sent after
                assert data["tasks_created"] == posts_at_close
                _check_accounting(data, {first.task_id or ""}, session)
            finally:
                await stream.aclose()
    assert transport.statistics().open_connections == 0
    assert not _pending_tasks() - before


@pytest.mark.anyio
async def test_a_submitting_tasks_shield_holds_off_every_cancellation_but_its_owners_until_the_post_is_done() -> None:
    # The mechanism under a batch's submitters: a scope shielded from outside, cancelled by
    # its owner through the shield; a cancellation that comes while a POST is on the wire is
    # delivered at the first checkpoint after it, never inside it.
    from flux_async._submit import _post_shield, submitting_task

    steps: list[str] = []
    on_wire = anyio.Event()
    answered = anyio.Event()
    shields: list[Any] = []

    async def submitter() -> None:
        with submitting_task() as shield:
            shields.append(shield)
            with _post_shield() as held:
                assert held is None  # the task's own shield, not a scope of its own
                on_wire.set()
                await answered.wait()  # a checkpoint on the wire: no cancellation here
                steps.append("answered")
            steps.append("recorded")  # no checkpoint between the answer and its record
            await anyio.lowlevel.checkpoint()  # the first checkpoint after it: cancelled here
            steps.append("sent another")
        steps.append("stopped")

    outer = anyio.CancelScope()

    async def under_a_scope_of_its_callers() -> None:
        with outer:
            await submitter()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(under_a_scope_of_its_callers)
            await on_wire.wait()
            outer.cancel()  # from outside: held off for good
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            assert steps == []
            shields[0].cancel()  # its owner's: held off while the POST is on the wire
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            assert steps == []
            answered.set()
    assert steps == ["answered", "recorded", "stopped"]
