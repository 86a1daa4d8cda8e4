"""What jobs cost and budgets that hold, over real sockets against the emulator on 127.0.0.1.

Tasks created and what they were charged come from the emulator's own counters, never from
the client's. The budget is checked at every concurrency, with jobs in flight and submits in
doubt counted, across sessions sharing a ledger file, and by a property test over random
prices, ``n``, faults and concurrency. The estimate is checked against what a real run settles.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flux_async import (
    BudgetExceededError,
    ConfigurationError,
    Cost,
    FileLedger,
    GenerationRequest,
    ModerationError,
    Outcome,
    SubmissionUncertainError,
    estimate_cost,
)
from flux_async.emulator import (
    DEFAULT_API_KEY,
    Duration,
    Emulator,
    FaultRates,
    ManualClock,
    Scenario,
)
from flux_async.retry import RetryPolicy
from flux_async.scheduler import PollPolicy
from flux_async.session import Limits, Session

FAST = PollPolicy(target_delay=0.02, first_poll=0.01, min_interval=0.005, quantum=0.005, max_interval=0.05)
RETRY = RetryPolicy(base_delay=0.005, max_delay=0.02, max_retry_after=0.02, budget_floor=1000.0)
PRO = "flux-kontext-pro"
MAX = "flux-kontext-max"


def session_for(emu: Emulator, provider: str, **kwargs: Any) -> Session:
    kwargs.setdefault("poll_policy", FAST)
    kwargs.setdefault("retry_policy", RETRY)
    return Session(provider, api_key=DEFAULT_API_KEY, base_url=emu.base_url(provider), **kwargs)


def requests(count: int, model: str = PRO, *, keyed: bool = False, **fields: Any) -> list[GenerationRequest]:
    return [
        GenerationRequest(model=model, prompt=f"lighthouse {i} {sorted(fields.items())}",
                          idempotency_key=f"batch:{i}" if keyed else None, **fields)
        for i in range(count)
    ]


async def run(
    session: Session, jobs: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest]
) -> tuple[list[Outcome], BaseException | None]:
    """Every outcome of ``jobs``, and the error the batch ended with (if any)."""
    outcomes: list[Outcome] = []
    try:
        async for outcome in session.as_completed(jobs):
            outcomes.append(outcome)
    except BudgetExceededError as exc:
        return outcomes, exc
    return outcomes, None


# -- budgets hold ---------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("concurrency", [1, 16, 64])
async def test_a_budget_holds_across_sessions_sharing_a_ledger_and_nothing_is_paid_twice(
    concurrency: int, tmp_path: Path
) -> None:
    path = tmp_path / "batch.ledger"
    jobs = requests(100, keyed=True)
    limits = {"max_concurrent_submits": concurrency, "max_outstanding": 128}
    with anyio.fail_after(60):
        async with Emulator(Scenario(seed=5, duration=Duration.fixed(0.02))) as emu:
            # $1.00 at $0.04 a job: 25 tasks, whatever the concurrency.
            with FileLedger(path) as ledger:
                async with session_for(emu, "bfl", ledger=ledger,
                                       limits=Limits(**limits, max_spend_usd=1.00)) as session:
                    outcomes, stopped = await run(session, jobs)
                    first = session.statistics()
            assert isinstance(stopped, BudgetExceededError)
            assert emu.stats()["tasks_created"] == 25
            assert sum(o.ok for o in outcomes) == 25
            refused = [o for o in outcomes if isinstance(o.error, BudgetExceededError)]
            assert refused
            assert all(o.task_id is None and o.cost is None for o in refused)
            assert (first.spent_usd, first.reserved_usd, first.max_spend_usd) == (1.0, 0.0, 1.0)

            # The budget counts what the ledger holds: $2.00 in all pays for 25 more.
            with FileLedger(path) as ledger:
                async with session_for(emu, "bfl", ledger=ledger,
                                       limits=Limits(**limits, max_spend_usd=2.00)) as session:
                    assert session.statistics().carried_over_usd == 1.0
                    outcomes, stopped = await run(session, jobs)
                    second = session.statistics()
            assert isinstance(stopped, BudgetExceededError)
            assert emu.stats()["tasks_created"] == 50
            assert second.deduplicated == 25  # the first 25 keys: their tasks, not new ones
            assert (second.spent_usd, second.reserved_usd) == (2.0, 0.0)

            # $4.00 finishes the rest.
            with FileLedger(path) as ledger:
                async with session_for(emu, "bfl", ledger=ledger,
                                       limits=Limits(**limits, max_spend_usd=4.00)) as session:
                    outcomes, stopped = await run(session, jobs)
                    third = session.statistics()
            assert stopped is None
            assert sorted(o.index for o in outcomes) == list(range(100))
            assert all(o.ok for o in outcomes)
            assert (third.spent_usd, third.carried_over_usd) == (4.0, 2.0)
            data = emu.stats()
            assert data["tasks_created"] == 100
            assert data["requests"]["submit"] == 100
            assert data["duplicate_submits"] == 0
            assert data["charged_usd"] == pytest.approx(4.0)


@pytest.mark.anyio
async def test_once_the_budget_refuses_a_job_a_batch_reads_and_sends_nothing_more() -> None:
    read: list[int] = []

    async def feed() -> AsyncIterator[GenerationRequest]:
        for i, job in enumerate(requests(100)):
            read.append(i)
            yield job

    with anyio.fail_after(30):
        async with (
            Emulator(Scenario(seed=6, duration=Duration.fixed(0.02))) as emu,
            session_for(emu, "bfl", limits=Limits(max_spend_usd=0.20, max_outstanding=8,
                                                  max_concurrent_submits=4)) as session,
        ):
            outcomes, stopped = await run(session, feed())
    assert isinstance(stopped, BudgetExceededError)
    assert emu.stats()["tasks_created"] == 5
    assert sum(o.ok for o in outcomes) == 5
    assert sorted(o.index for o in outcomes) == read  # everything read is delivered...
    assert len(read) <= 5 + 8 + 1  # ...and reading stopped
    assert all(isinstance(o.error, BudgetExceededError) for o in outcomes if not o.ok)


@pytest.mark.anyio
async def test_jobs_in_flight_hold_their_reservation() -> None:
    clock = ManualClock()  # the emulator's tasks stay pending until the clock moves
    with anyio.fail_after(20):
        async with (
            Emulator(Scenario(duration=Duration.fixed(10)), clock=clock) as emu,
            session_for(emu, "bfl", limits=Limits(max_spend_usd=0.10)) as session,
        ):
            first = await session.submit(GenerationRequest(model=PRO, prompt="a"))
            second = await session.submit(GenerationRequest(model=PRO, prompt="b"))
            assert (first.cost, second.cost) == (Cost(0.04, "reported"), Cost(0.04, "reported"))
            with pytest.raises(BudgetExceededError) as caught:
                await session.submit(GenerationRequest(model=PRO, prompt="c"))
            assert (caught.value.reserved_usd, caught.value.spent_usd) == (0.08, 0.0)
            held = session.statistics()
            assert (held.spent_usd, held.reserved_usd) == (0.0, 0.08)
            assert held.spend_by_model[PRO].open_jobs == 2
            assert emu.stats()["tasks_created"] == 2
            clock.advance(10)
            results = [await first.result(), await second.result()]
            assert [r.cost for r in results] == [Cost(0.04, "reported")] * 2
            done = session.statistics()
            assert (done.spent_usd, done.reserved_usd) == (0.08, 0.0)
            with pytest.raises(BudgetExceededError):  # settled jobs count just the same
                await session.submit(GenerationRequest(model=PRO, prompt="d"))
            assert emu.stats()["tasks_created"] == 2


@pytest.mark.anyio
async def test_a_submit_in_doubt_counts_as_spent() -> None:
    with anyio.fail_after(20):
        async with Emulator(Scenario(duration=Duration.fixed(0.02))) as emu:
            emu.fail_next("submit", "drop_after_create", provider="bfl")
            async with session_for(emu, "bfl", limits=Limits(max_spend_usd=0.08)) as session:
                jobs = requests(3)
                outcomes, _ = await run(session, jobs[:1])
                [doubt] = outcomes
                assert isinstance(doubt.error, SubmissionUncertainError)
                assert doubt.error.cost == Cost(0.04, "price_table")
                assert doubt.cost == Cost(0.04, "price_table")
                stats = session.statistics()
                assert (stats.reserved_usd, len(stats.in_doubt)) == (0.04, 1)
                assert stats.in_doubt[0].reserved_usd == 0.04
                assert (await session.generate(jobs[1])).cost == Cost(0.04, "reported")
                with pytest.raises(BudgetExceededError):
                    await session.generate(jobs[2])
            assert emu.stats()["tasks_created"] == 2


@pytest.mark.anyio
async def test_what_earlier_sessions_left_open_counts_until_it_settles(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "run.ledger"
    with anyio.fail_after(20):
        async with Emulator(Scenario(duration=Duration.fixed(10)), clock=clock) as emu:
            with FileLedger(path) as ledger:
                async with session_for(emu, "bfl", ledger=ledger) as session:
                    for prompt in ("a", "b"):  # left running when the session closes
                        await session.submit(GenerationRequest(model=PRO, prompt=prompt))
                    emu.fail_next("submit", "drop_after_create", provider="bfl")
                    with pytest.raises(SubmissionUncertainError):
                        await session.submit(GenerationRequest(model=PRO, prompt="c", idempotency_key="c"))
            with FileLedger(path) as ledger:
                async with session_for(emu, "bfl", ledger=ledger, resubmit_in_doubt=True,
                                       limits=Limits(max_spend_usd=0.18)) as session:
                    start = session.statistics()
                    assert (start.spent_usd, start.reserved_usd, start.carried_over_usd) == (0.0, 0.12, 0.12)
                    assert len(start.in_doubt) == 1
                    with pytest.raises(BudgetExceededError):
                        await session.submit(GenerationRequest(model=MAX, prompt="d"))
                    # Sending the request in doubt again: the first POST may have been charged,
                    # so its reservation becomes spent and the new one is reserved on top.
                    again = await session.submit(GenerationRequest(model=PRO, prompt="c", idempotency_key="c"))
                    assert session.statistics().spent_usd == 0.04
                    with pytest.raises(BudgetExceededError):
                        await session.submit(GenerationRequest(model=PRO, prompt="e"))
                    recovered = await session.recover()  # a, b, and the job of c
                    assert again in recovered
                    assert len(recovered) == 3
                    clock.advance(10)
                    for job in recovered:
                        # BFL's figure came with the submit answer: a job recovered from an
                        # earlier session settles at its reservation instead.
                        source = "reported" if job is again else "price_table"
                        assert (await job.result()).cost == Cost(0.04, source)
                    end = session.statistics()
                    assert (end.spent_usd, end.reserved_usd) == (0.16, 0.0)
            assert emu.stats()["tasks_created"] == 4  # a, b, c's first POST, c again
            with FileLedger(path) as ledger:
                assert Session("bfl", api_key=DEFAULT_API_KEY, ledger=ledger).statistics().spent_usd == 0.16


@pytest.mark.anyio
async def test_a_budget_needs_every_price_and_says_which_to_give() -> None:
    async with Emulator(Scenario()) as emu:
        async with session_for(emu, "toapis", limits=Limits(max_spend_usd=5)) as session:
            with pytest.raises(ConfigurationError, match=r"grok-4-1-image.*Session\(prices="):
                await session.generate(model="grok-4-1-image", prompt="a", n=2)
            outcomes, _ = await run(session, requests(2))
            assert all(isinstance(o.error, ConfigurationError) for o in outcomes)
        assert emu.stats()["requests"]["submit"] == 0
        with pytest.raises(ConfigurationError, match="grok-4-1-image"):
            session_for(emu, "bfl", prices={"grok-4-1-image": 0.05})
        async with session_for(emu, "toapis", prices={"grok-4-1-image": 0.05},
                               limits=Limits(max_spend_usd=0.25)) as session:
            assert session.prices["grok-4-1-image"] == 0.05
            result = await session.generate(model="grok-4-1-image", prompt="a", n=4)
            assert result.cost == Cost(0.2, "price_table")
            with pytest.raises(BudgetExceededError):
                await session.generate(model="grok-4-1-image", prompt="b", n=2)
            assert (await session.generate(model="grok-4-1-image", prompt="c")).cost == Cost(0.05, "price_table")
            assert session.statistics().spent_usd == pytest.approx(0.25)


# -- what each job cost --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_each_job_carries_its_cost_and_where_it_came_from() -> None:
    scenario = Scenario(seed=2, duration=Duration.fixed(0.02),
                        per_provider={"bfl": {"moderation_rate": 0.5}},
                        prices={"bfl/flux-kontext-pro": 0.05, "apimart/flux-kontext-max": 0.07})
    with anyio.fail_after(30):
        async with Emulator(scenario) as emu:
            async with session_for(emu, "bfl") as session:
                outcomes, _ = await run(session, requests(10))
                stats = session.statistics()
            moderated = [o for o in outcomes if isinstance(o.error, ModerationError)]
            done = [o for o in outcomes if o.ok]
            assert moderated
            assert done
            # BFL's own figure wins over the table (0.04), and a moderated task is not charged.
            assert {o.cost for o in done} == {Cost(0.05, "reported")}
            assert {o.result.cost for o in done if o.result is not None} == {Cost(0.05, "reported")}
            assert {o.cost for o in moderated} == {Cost(0.0, "reported")}
            assert stats.spent_usd == pytest.approx(0.05 * len(done))
            assert stats.spend_by_model[PRO].settled_jobs == 10
            assert emu.stats()["charged_usd"] == pytest.approx(stats.spent_usd)

            async with session_for(emu, "apimart") as session:
                result = await session.generate(model=MAX, prompt="a")
            assert result.cost == Cost(0.07, "reported")

            async with session_for(emu, "toapis") as session:
                result = await session.generate(model=PRO, prompt="a")
                outcomes, _ = await run(session, requests(3))
                stats = session.statistics()
            assert result.cost is Cost.UNKNOWN
            assert {o.cost for o in outcomes} == {Cost.UNKNOWN}
            assert (stats.spent_usd, stats.unknown_cost_jobs) == (0.0, 4)
            assert stats.spend_by_model[PRO].unknown_cost_jobs == 4


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["bfl", "apimart", "toapis"])
async def test_the_estimate_is_what_a_real_run_settles(provider: str) -> None:
    prices = {"grok-4-1-image": 0.06, PRO: 0.03} if provider == "toapis" else None
    if provider == "toapis":
        jobs = [*requests(7), *requests(5, "grok-4-1-image", n=2), *requests(3, "grok-4-1-image", n=4)]
        scenario = Scenario(seed=4, duration=Duration.fixed(0.02),
                            prices={f"toapis/{m}": p for m, p in (prices or {}).items()})
    else:
        jobs = [*requests(12), *requests(5, MAX)]
        scenario = Scenario(seed=4, duration=Duration.fixed(0.02))
    estimate = estimate_cost(jobs, provider, prices=prices)
    assert estimate.usd is not None
    with anyio.fail_after(30):
        async with Emulator(scenario) as emu, session_for(emu, provider, prices=prices) as session:
            outcomes, stopped = await run(session, jobs)
            stats = session.statistics()
            charged = emu.stats()["charged_usd"]
    assert stopped is None
    assert all(o.ok for o in outcomes)
    assert stats.spent_usd == estimate.usd
    assert math.isclose(sum(o.cost.usd or 0 for o in outcomes if o.cost), estimate.usd)
    assert charged == pytest.approx(estimate.usd)
    for model, row in estimate.by_model.items():
        assert stats.spend_by_model[model].spent_usd == row.usd
        assert stats.spend_by_model[model].settled_jobs == row.jobs
    source = "price_table" if provider == "toapis" else "reported"
    assert {o.cost.source for o in outcomes if o.cost} == {source}


# -- the property -----------------------------------------------------------------------------------------

MICROS = st.integers(1, 80).map(lambda cents: cents / 1000)  # $0.001 .. $0.080


@st.composite
def budget_runs(draw: st.DrawFn) -> dict[str, Any]:
    provider = draw(st.sampled_from(["toapis", "bfl", "apimart"]))
    models = ["grok-4-1-image", PRO] if provider == "toapis" else [PRO, MAX]
    prices = {model: draw(MICROS) for model in models}
    jobs = draw(st.lists(st.tuples(st.sampled_from(models), st.sampled_from([1, 2, 4])),
                         min_size=1, max_size=14))
    demand = sum(prices[m] * (n if m.startswith("grok") else 1) for m, n in jobs)
    return {
        "provider": provider,
        "prices": prices,
        "jobs": [(m, n if m.startswith("grok") else None) for m, n in jobs],
        "budget": round(draw(st.floats(0, 1.2)) * demand, 3),
        "failure_rate": draw(st.sampled_from([0.0, 0.3])),
        "moderation_rate": draw(st.sampled_from([0.0, 0.3])),
        "submit_faults": draw(st.sampled_from([
            FaultRates(),
            FaultRates(server_error=0.2),
            FaultRates(drop_after_create=0.2),
            FaultRates(server_error=0.1, drop=0.1, drop_after_create=0.1),
        ])),
        "concurrency": draw(st.integers(1, 16)),
    }


@settings(max_examples=40, deadline=None)
@given(budget_runs())
def test_a_budget_shared_by_concurrent_generate_calls_is_never_exceeded(case: dict[str, Any]) -> None:
    provider = case["provider"]
    scenario = Scenario(
        seed=9,
        duration=Duration.uniform(0.0, 0.02),
        failure_rate=case["failure_rate"],
        moderation_rate=case["moderation_rate"],
        submit_faults=case["submit_faults"],
        prices={f"{provider}/{model}": price for model, price in case["prices"].items()},
    )
    errors: list[BaseException] = []

    async def main() -> tuple[dict[str, Any], Any]:
        async with Emulator(scenario) as emu:
            limits = Limits(max_spend_usd=case["budget"], max_concurrent_submits=case["concurrency"])
            async with session_for(emu, provider, prices=case["prices"], limits=limits) as session:

                async def one(i: int, model: str, n: int | None) -> None:
                    try:
                        await session.generate(model=model, prompt=f"job {i}", n=n)
                    except Exception as exc:
                        errors.append(exc)

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as tg:
                        for i, (model, n) in enumerate(case["jobs"]):
                            tg.start_soon(one, i, model, n)
                return emu.stats(), session.statistics()

    data, stats = anyio.run(main)
    budget = case["budget"]
    # What the provider charged for every task the client created: never over the budget.
    assert data["charged_usd"] <= budget + 1e-9, (data["charged_usd"], budget)
    assert stats.spent_usd + stats.reserved_usd <= budget + 1e-9
    refused = sum(isinstance(e, BudgetExceededError) for e in errors)
    if refused:
        assert data["tasks_created"] < len(case["jobs"])
    if budget >= sum(case["prices"][m] * (n or 1) for m, n in case["jobs"]) - 1e-9:
        assert not refused  # room for every job: none refused
