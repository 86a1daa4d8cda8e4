"""The shared poll scheduler, in virtual time: timing policy, batching, limits, errors, memory.

A fake provider answers polls from a scripted timeline (each task completes at a known virtual
time; its progress is linear, as integer percents, after an optional queue). Nothing here waits
in real time.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import statistics
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from vtime import VirtualTime

from flux_async.errors import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    ServerError,
    TaskTimeoutError,
    TransportError,
)
from flux_async.models import TaskRef, TaskState, TaskStatus
from flux_async.scheduler import PollPolicy, PollScheduler, SchedulerStatistics
from flux_async.scheduler._timing import WatchState, observe, window
from flux_async.scheduler._wakes import EVENT_MEMORY

pytestmark = pytest.mark.anyio

T = TypeVar("T")


# -- a scripted provider ---------------------------------------------------------------------------


@attrs.define
class Job:
    """One scripted task: submitted at ``start``, terminal at ``start + duration``."""

    start: float
    duration: float
    provider: str = "toapis"
    model: str = "flux-kontext-pro"
    status: TaskStatus = TaskStatus.SUCCEEDED
    estimated_time: float | None = None
    #: raised by the next polls, in order, before the timeline is consulted
    errors: list[Exception] = attrs.Factory(list)

    @property
    def end(self) -> float:
        return self.start + self.duration


class FakeProvider:
    """Answers polls from scripted jobs; records every poll's arrival time."""

    def __init__(
        self,
        vt: VirtualTime,
        *,
        latency: float = 0.0,
        progress: bool = True,
        queue_fraction: float = 0.0,
    ) -> None:
        self.vt = vt
        self.latency = latency
        self.progress = progress
        self.queue_fraction = queue_fraction
        self.jobs: dict[str, Job] = {}
        self.polls: dict[str, list[float]] = {}
        self.in_flight = 0
        self.max_in_flight = 0

    def state_at(self, task_id: str, now: float) -> TaskState:
        job = self.jobs[task_id]
        elapsed = now - job.start
        if elapsed >= job.duration:
            return TaskState(task_id=task_id, status=job.status, raw_status=job.status.value)
        progress = None
        if self.progress:
            queued = job.duration * self.queue_fraction
            fraction = 0.0 if elapsed < queued else (elapsed - queued) / (job.duration - queued)
            progress = float(math.floor(100 * fraction))
        return TaskState(
            task_id=task_id,
            status=TaskStatus.RUNNING,
            raw_status="in_progress",
            progress=progress,
            estimated_time=job.estimated_time,
        )

    async def poll(self, ref: TaskRef) -> TaskState:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.vt.sleep(self.latency / 2)
            now = self.vt.clock()
            self.polls.setdefault(ref.task_id, []).append(now)
            job = self.jobs[ref.task_id]
            if job.errors:
                raise job.errors.pop(0)
            state = self.state_at(ref.task_id, now)
            await self.vt.sleep(self.latency / 2)
            return state
        finally:
            self.in_flight -= 1

    def all_polls(self) -> list[float]:
        return sorted(t for times in self.polls.values() for t in times)


class Outcomes:
    """Collects on_done calls: value and virtual time, and how often each task was reported."""

    def __init__(self, vt: VirtualTime) -> None:
        self.vt = vt
        self.values: dict[str, TaskState | BaseException] = {}
        self.times: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def callback(self, task_id: str) -> Callable[[TaskState | BaseException], None]:
        def on_done(value: TaskState | BaseException) -> None:
            self.calls[task_id] = self.calls.get(task_id, 0) + 1
            self.values[task_id] = value
            self.times[task_id] = self.vt.clock()

        return on_done


def make_scheduler(
    vt: VirtualTime,
    provider: FakeProvider,
    policy: PollPolicy | None = None,
    *,
    poll: Callable[[TaskRef], Awaitable[TaskState]] | None = None,
    seed: int = 1,
) -> PollScheduler:
    return PollScheduler(
        poll or provider.poll,
        policy=policy or PollPolicy(),
        clock=vt.clock,
        sleep=vt.sleep,
        rng=random.Random(seed),
    )


async def with_driver(sched: PollScheduler, body: Callable[[], Awaitable[T]]) -> T:
    """Run ``body`` while the scheduler's driver runs, then stop the driver."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(sched.run)
        result = await body()
        tg.cancel_scope.cancel()
    return result


def ref_for(task_id: str, job: Job) -> TaskRef:
    return TaskRef(provider=job.provider, task_id=task_id, model=job.model)


async def run_jobs(
    vt: VirtualTime,
    sched: PollScheduler,
    provider: FakeProvider,
    jobs: dict[str, Job],
    *,
    limit: float = 1000.0,
    push: bool = False,
) -> Outcomes:
    """Submit ``jobs`` at their start times (relative to now) and advance until all are done."""
    outcomes = Outcomes(vt)
    base = vt.clock()
    for task_id, job in sorted(jobs.items(), key=lambda item: item[1].start):
        job.start += base
        provider.jobs[task_id] = job
        await vt.run_until(job.start)
        sched.watch(
            ref_for(task_id, job), outcomes.callback(task_id), submitted_at=job.start, push=push
        )
    await vt.run_while(lambda: len(outcomes.values) < len(jobs), limit=base + limit)
    return outcomes


def lognormal_jobs(
    n: int,
    *,
    median: float = 10.0,
    sigma: float = 0.35,
    spread: float = 2.0,
    seed: int = 7,
    prefix: str = "t",
) -> dict[str, Job]:
    rng = random.Random(seed)
    return {
        f"{prefix}{i}": Job(
            start=rng.uniform(0, spread), duration=median * math.exp(rng.gauss(0, sigma))
        )
        for i in range(n)
    }


def delays(outcomes: Outcomes, jobs: dict[str, Job]) -> list[float]:
    return sorted(outcomes.times[task_id] - job.end for task_id, job in jobs.items())


def polls_per_job(provider: FakeProvider, jobs: dict[str, Job]) -> float:
    return statistics.mean(len(provider.polls.get(task_id, [])) for task_id in jobs)


def fixed_poller(jobs: dict[str, Job], interval: float, latency: float) -> tuple[float, float]:
    """(polls per job, p50 delay) of one coroutine per job polling every ``interval``."""
    polls, late = [], []
    for job in jobs.values():
        k = 1
        while k * interval + latency / 2 < job.duration:
            k += 1
        polls.append(k)
        late.append(k * interval + latency - job.duration)
    return statistics.mean(polls), statistics.median(late)


# -- the policy value ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_delay": 0},
        {"min_interval": 5.0, "max_interval": 1.0},
        {"backoff": 0.5},
        {"jitter": 1.0},
        {"max_in_flight": 0},
        {"max_poll_errors": 0},
        {"max_polls_per_second": 0},
        {"first_poll": -1.0},
        {"quantum": -0.1},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError, match=r"^PollPolicy\.\w+"):
        PollPolicy(**kwargs)  # type: ignore[arg-type]


# -- timing policy ---------------------------------------------------------------------------------


async def test_backoff_starts_at_first_poll_grows_and_is_capped() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    policy = PollPolicy(first_poll=1.0, backoff=2.0, max_interval=8.0, jitter=0.0, quantum=0.0)
    sched = make_scheduler(vt, provider, policy)
    jobs = {"a": Job(start=0.0, duration=1000.0)}

    async def body() -> None:
        await run_jobs(vt, sched, provider, jobs, limit=40.0)

    await with_driver(sched, body)
    assert provider.polls["a"] == pytest.approx([1.0, 3.0, 7.0, 15.0, 23.0, 31.0, 39.0])


async def test_first_poll_after_one_second_when_nothing_is_known() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider, PollPolicy(quantum=0.0))
    jobs = {"a": Job(start=0.5, duration=0.7)}

    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    assert provider.polls["a"] == [pytest.approx(1.5)]
    assert isinstance(outcomes.values["a"], TaskState)


async def test_jitter_stays_within_its_bounds() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    policy = PollPolicy(first_poll=1.0, backoff=2.0, max_interval=8.0, jitter=0.2, quantum=0.0)
    sched = make_scheduler(vt, provider, policy)
    jobs = {f"t{i}": Job(start=0.0, duration=1000.0) for i in range(200)}

    await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs, limit=30.0))
    gaps_by_rank: dict[int, list[float]] = {}
    for times in provider.polls.values():
        assert times[0] == pytest.approx(1.0)  # an explicit first_poll is exact
        for rank, (a, b) in enumerate(itertools.pairwise(times)):
            gaps_by_rank.setdefault(rank, []).append(b - a)
    for rank, gaps in gaps_by_rank.items():
        base = min(8.0, 2.0 ** (rank + 1))
        assert min(gaps) >= base * 0.8 - 1e-9
        assert max(gaps) <= min(8.0, base * 1.2) + 1e-9
        assert max(gaps) - min(gaps) > base * 0.1  # it does spread them


async def test_min_interval_is_respected_between_polls_of_one_task() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, queue_fraction=0.2, latency=0.01)
    policy = PollPolicy(min_interval=0.4)
    sched = make_scheduler(vt, provider, policy)
    jobs = lognormal_jobs(200, median=3.0)

    await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    for times in provider.polls.values():
        for a, b in itertools.pairwise(times):
            assert b - a >= 0.4 - 1e-6


# -- batching and limits ---------------------------------------------------------------------------


async def test_tasks_due_within_one_quantum_share_one_wakeup() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    policy = PollPolicy(first_poll=1.0, quantum=0.05, max_in_flight=1000)
    sched = make_scheduler(vt, provider, policy)
    rng = random.Random(3)
    outcomes = Outcomes(vt)
    for i in range(500):
        job = Job(start=rng.uniform(0.001, 0.049), duration=0.9)
        provider.jobs[f"t{i}"] = job
        sched.watch(ref_for(f"t{i}", job), outcomes.callback(f"t{i}"), submitted_at=job.start)

    async def body() -> SchedulerStatistics:
        await vt.run_until(1.2)
        return sched.statistics()

    stats = await with_driver(sched, body)
    assert len(outcomes.values) == 500
    assert len(set(provider.all_polls())) == 1
    assert provider.all_polls()[0] == pytest.approx(1.05)
    assert stats.wakeups == 1
    assert stats.polls_sent == 500


async def test_without_a_quantum_every_due_time_is_its_own_wakeup() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider, PollPolicy(first_poll=1.0, quantum=0.0))
    outcomes = Outcomes(vt)
    for i in range(50):
        job = Job(start=0.001 * (i + 1), duration=1.1)
        provider.jobs[f"t{i}"] = job
        sched.watch(ref_for(f"t{i}", job), outcomes.callback(f"t{i}"), submitted_at=job.start)

    async def body() -> SchedulerStatistics:
        await vt.run_until(1.06)
        return sched.statistics()

    stats = await with_driver(sched, body)
    assert stats.wakeups >= 50


async def test_max_in_flight_is_respected_and_everything_finishes() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=0.3, queue_fraction=0.2)
    sched = make_scheduler(vt, provider, PollPolicy(max_in_flight=8))
    jobs = lognormal_jobs(300, median=5.0, spread=0.1)

    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    assert provider.max_in_flight == 8
    assert len(outcomes.values) == 300
    assert sched.statistics().lag_p99 > 0  # polls did wait for a slot, and the lag shows it


async def test_poll_budget_is_never_exceeded_and_every_task_finishes() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, queue_fraction=0.2)
    sched = make_scheduler(vt, provider, PollPolicy(max_polls_per_second=20))
    jobs = lognormal_jobs(200, median=4.0, spread=0.5)

    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    assert len(outcomes.values) == 200
    starts = provider.all_polls()
    for i, t in enumerate(starts):
        in_window = [s for s in starts[i:] if s <= t + 1.0]  # a closed one-second window
        assert len(in_window) <= 20
    # The budget was the bottleneck (first polls of 200 tasks were due within half a second),
    # and it was used, not wasted.
    assert len(starts) / (starts[-1] - starts[0]) > 15
    assert sched.statistics().max_lag > 5


async def test_fractional_budget_below_one_poll_a_second() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider, PollPolicy(max_polls_per_second=0.5))
    jobs = {f"t{i}": Job(start=0.0, duration=0.5) for i in range(5)}

    await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    starts = provider.all_polls()
    assert len(starts) == 5
    assert all(b - a >= 2.0 - 1e-6 for a, b in itertools.pairwise(starts))


# -- 429 -------------------------------------------------------------------------------------------


async def test_a_429_pauses_every_poll_of_that_provider_but_not_the_others() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    policy = PollPolicy(first_poll=1.0, backoff=1.0, max_interval=1.0, jitter=0.0, quantum=0.0)
    sched = make_scheduler(vt, provider, policy)
    jobs = {f"a{i}": Job(start=0.0, duration=20.0, provider="toapis") for i in range(5)}
    jobs |= {f"b{i}": Job(start=0.0, duration=20.0, provider="apimart") for i in range(5)}
    jobs["a0"].errors.append(RateLimitError("slow down", provider="toapis", retry_after=5.0))

    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs, limit=30.0))
    hit = provider.polls["a0"][0]  # the 429 arrived at t=1
    toapis = [t for task_id, ts in provider.polls.items() if task_id.startswith("a") for t in ts]
    apimart = [t for task_id, ts in provider.polls.items() if task_id.startswith("b") for t in ts]
    assert not [t for t in toapis if hit < t < hit + 5.0 - 1e-9]
    assert len([t for t in apimart if hit < t < hit + 5.0]) >= 5 * 4
    assert len(outcomes.values) == 10
    assert all(isinstance(v, TaskState) for v in outcomes.values.values())
    stats = sched.statistics()
    assert stats.rate_limited == 1
    assert stats.retries == 1
    assert stats.gave_up == 0


async def test_retry_after_is_capped() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    policy = PollPolicy(first_poll=1.0, rate_limit_pause_cap=3.0, quantum=0.0)
    sched = make_scheduler(vt, provider, policy)
    jobs = {"a": Job(start=0.0, duration=2.0)}
    jobs["a"].errors.append(RateLimitError("slow down", retry_after=1000.0))

    await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    assert provider.polls["a"] == [pytest.approx(1.0), pytest.approx(4.0)]


async def test_429s_without_retry_after_back_off_and_never_give_up() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider, PollPolicy(first_poll=1.0, max_poll_errors=2, quantum=0.0))
    jobs = {"a": Job(start=0.0, duration=0.5)}
    jobs["a"].errors.extend(RateLimitError("slow down") for _ in range(4))

    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    assert isinstance(outcomes.values["a"], TaskState)  # 429s do not count as task errors
    gaps = [b - a for a, b in itertools.pairwise(provider.polls["a"])]
    assert len(gaps) == 4
    assert gaps[-1] > gaps[0]  # the pause doubles (with equal jitter) while 429s continue
    assert sched.statistics().rate_limited == 4


@pytest.mark.parametrize("retry_after", [0.0, -3.0])
async def test_a_429_asking_for_no_wait_still_backs_off(retry_after: float) -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider, PollPolicy(first_poll=1.0, quantum=0.0))
    jobs = {"a": Job(start=0.0, duration=0.5)}
    jobs["a"].errors.extend(RateLimitError("slow down", retry_after=retry_after) for _ in range(6))

    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    assert isinstance(outcomes.values["a"], TaskState)
    gaps = [b - a for a, b in itertools.pairwise(provider.polls["a"])]
    assert len(gaps) == 6
    assert min(gaps) >= 0.5  # never re-polled at once...
    assert gaps[-1] > gaps[0]  # ...and the pause grows while the 429s go on


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationError("bad key", status=401),
        NotFoundError("no such task", status=404),
        ValueError("a bug in a codec"),
    ],
)
async def test_a_non_retryable_error_ends_the_watch_once(error: Exception) -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt)
    sched = make_scheduler(vt, provider)
    jobs = {"a": Job(start=0.0, duration=5.0, errors=[error])}

    async def body() -> Outcomes:
        outcomes = await run_jobs(vt, sched, provider, jobs)
        await vt.advance(30.0)
        return outcomes

    outcomes = await with_driver(sched, body)
    assert outcomes.values["a"] is error
    assert outcomes.calls["a"] == 1
    assert len(provider.polls["a"]) == 1
    assert sched.outstanding() == []


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: TransportError("connection reset"),
        lambda: ServerError("upstream failed", status=503),
        lambda: ProtocolError("not JSON"),
    ],
)
async def test_retryable_errors_are_retried_then_given_up(
    make_error: Callable[[], Exception],
) -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt)
    sched = make_scheduler(vt, provider, PollPolicy(max_poll_errors=3))
    errors = [make_error() for _ in range(10)]
    jobs = {"a": Job(start=0.0, duration=500.0, errors=list(errors))}

    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    assert outcomes.values["a"] is errors[2]  # the last of three consecutive failures
    assert outcomes.calls["a"] == 1
    assert len(provider.polls["a"]) == 3
    stats = sched.statistics()
    assert (stats.polls_failed, stats.retries, stats.gave_up) == (3, 2, 1)


async def test_a_success_resets_the_error_count() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    # Every other poll fails: never two in a row, so the task is never given up.
    jobs = {"a": Job(start=0.0, duration=30.0)}
    calls = 0

    async def flaky(ref: TaskRef) -> TaskState:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise TransportError("connection reset")
        return await provider.poll(ref)

    policy = PollPolicy(first_poll=1.0, max_poll_errors=2)
    sched = make_scheduler(vt, provider, policy, poll=flaky)
    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    assert isinstance(outcomes.values["a"], TaskState)
    stats = sched.statistics()
    assert stats.retries == stats.polls_failed == calls // 2 >= 3


async def test_deadline_ends_the_watch_with_task_timeout_error() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider, PollPolicy(max_interval=4.0))
    outcomes = Outcomes(vt)
    provider.jobs["a"] = Job(start=0.0, duration=1000.0)

    async def body() -> None:
        sched.watch(ref_for("a", provider.jobs["a"]), outcomes.callback("a"), deadline=12.3)
        await vt.run_until(40.0)

    await with_driver(sched, body)
    error = outcomes.values["a"]
    assert isinstance(error, TaskTimeoutError)
    assert error.task_id == "a"
    assert outcomes.calls["a"] == 1
    assert 12.3 <= outcomes.times["a"] <= 12.3 + 0.05 + 1e-9
    assert all(t <= 12.3 for t in provider.polls["a"])
    stats = sched.statistics()
    assert (stats.timed_out, stats.gave_up, stats.outstanding) == (1, 1, 0)


async def test_a_failing_callback_does_not_stop_the_driver(
    caplog: pytest.LogCaptureFixture,
) -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt)
    sched = make_scheduler(vt, provider)
    outcomes = Outcomes(vt)

    def explode(value: TaskState | BaseException) -> None:
        raise RuntimeError("callback bug")

    async def body() -> None:
        provider.jobs["bad"] = Job(start=0.0, duration=1.0)
        provider.jobs["good"] = Job(start=0.0, duration=3.0)
        sched.watch(ref_for("bad", provider.jobs["bad"]), explode)
        sched.watch(ref_for("good", provider.jobs["good"]), outcomes.callback("good"))
        await vt.run_until(20.0)

    await with_driver(sched, body)
    assert isinstance(outcomes.values["good"], TaskState)
    assert "on_done callback for task bad raised" in caplog.text


# -- watching --------------------------------------------------------------------------------------


async def test_watching_the_same_task_twice_is_an_error() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt)
    sched = make_scheduler(vt, provider)
    ref = TaskRef(provider="toapis", task_id="a")
    sched.watch(ref, lambda value: None)
    with pytest.raises(ValueError, match="already watched"):
        sched.watch(ref, lambda value: None)


async def test_unwatch_stops_polling_without_calling_on_done() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=0.5, progress=False)
    sched = make_scheduler(vt, provider, PollPolicy(first_poll=1.0))
    outcomes = Outcomes(vt)
    for task_id in ("waiting", "in_flight", "kept"):
        provider.jobs[task_id] = Job(start=0.0, duration=1.1)
        sched.watch(ref_for(task_id, provider.jobs[task_id]), outcomes.callback(task_id))

    async def body() -> None:
        assert sched.unwatch("waiting")
        await vt.run_until(1.1)  # "in_flight" and "kept" are being polled
        assert sched.unwatch("in_flight")
        assert not sched.unwatch("in_flight")
        assert not sched.unwatch("never-watched")
        await vt.run_until(30.0)

    await with_driver(sched, body)
    assert "waiting" not in provider.polls
    assert provider.polls["in_flight"] == [pytest.approx(1.25)]
    assert set(outcomes.values) == {"kept"}
    assert sched.outstanding() == []


async def test_a_task_can_be_watched_again_after_unwatch() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=0.5, progress=False)
    sched = make_scheduler(vt, provider, PollPolicy(first_poll=1.0))
    outcomes = Outcomes(vt)
    provider.jobs["a"] = Job(start=0.0, duration=1.1)
    ref = ref_for("a", provider.jobs["a"])

    withdrawn: list[object] = []

    async def body() -> None:
        sched.watch(ref, withdrawn.append)
        await vt.run_until(1.1)  # its first poll is in flight
        sched.unwatch("a")
        sched.watch(ref, outcomes.callback("a"))
        await vt.run_until(30.0)

    await with_driver(sched, body)
    assert withdrawn == []
    assert outcomes.calls == {"a": 1}
    assert len(provider.polls["a"]) == 2  # the answer to the withdrawn watch's poll was dropped


async def test_outstanding_lists_the_watched_refs() -> None:
    vt = VirtualTime()
    sched = make_scheduler(vt, FakeProvider(vt))
    refs = [
        TaskRef(provider="bfl", task_id=f"t{i}", polling_url=f"https://x/{i}") for i in range(3)
    ]
    for ref in refs:
        sched.watch(ref, lambda value: None)
    sched.unwatch("t1")
    assert sched.outstanding() == [refs[0], refs[2]]


async def test_a_watch_wakes_the_sleeping_driver() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider, PollPolicy(quantum=0.0))
    outcomes = Outcomes(vt)
    provider.jobs["late"] = Job(start=0.0, duration=0.1)
    provider.jobs["soon"] = Job(start=0.0, duration=0.1)

    async def body() -> None:
        late = TaskRef(provider="toapis", task_id="late")
        sched.watch(late, outcomes.callback("late"), submitted_at=99.0)  # first poll at 100
        await vt.run_until(0.5)  # the driver now sleeps until t=100
        sched.watch(TaskRef(provider="toapis", task_id="soon"), outcomes.callback("soon"))
        await vt.run_until(5.0)

    await with_driver(sched, body)
    assert provider.polls["soon"] == [pytest.approx(1.5)]
    assert outcomes.times["soon"] == pytest.approx(1.5)
    assert "late" not in provider.polls


async def test_watch_before_the_driver_runs() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider, PollPolicy(quantum=0.0))
    outcomes = Outcomes(vt)
    provider.jobs["a"] = Job(start=0.0, duration=0.1)
    sched.watch(TaskRef(provider="toapis", task_id="a"), outcomes.callback("a"))
    await vt.advance(3.0)  # no driver yet: nothing happens

    async def body() -> None:
        await vt.advance(1.0)

    await with_driver(sched, body)
    assert provider.polls["a"] == [pytest.approx(3.0)]  # overdue: polled as soon as it runs
    assert isinstance(outcomes.values["a"], TaskState)


async def test_a_restarted_driver_still_watches_every_task() -> None:
    """Polls cancelled with the driver are not lost: the next run() sends them again."""
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=1.0, progress=False)
    sched = make_scheduler(vt, provider, PollPolicy(first_poll=1.0, max_in_flight=2, quantum=0.0))
    outcomes = Outcomes(vt)
    for i in range(5):
        provider.jobs[f"t{i}"] = Job(start=0.0, duration=3.0)
        sched.watch(ref_for(f"t{i}", provider.jobs[f"t{i}"]), outcomes.callback(f"t{i}"))

    async def until(t: float) -> None:
        await vt.run_until(t)

    await with_driver(sched, lambda: until(1.5))  # stopped with two polls in flight
    assert len(provider.polls) == 2
    assert outcomes.calls == {}
    assert sched.statistics().outstanding == 5
    await with_driver(sched, lambda: vt.run_while(lambda: len(outcomes.values) < 5, limit=60.0))
    assert outcomes.calls == {f"t{i}": 1 for i in range(5)}


async def test_only_one_driver_runs_at_a_time() -> None:
    vt = VirtualTime()
    sched = make_scheduler(vt, FakeProvider(vt))

    async def second_driver() -> None:
        await vt.settle()
        with pytest.raises(RuntimeError, match="already running"):
            await sched.run()

    await with_driver(sched, second_driver)


async def test_an_initial_terminal_state_is_delivered_by_the_driver_without_a_poll() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt)
    sched = make_scheduler(vt, provider)
    outcomes = Outcomes(vt)
    done = TaskState(task_id="a", status=TaskStatus.FAILED, raw_status="failed")

    async def body() -> None:
        await vt.advance(1.0)
        sched.watch(TaskRef(provider="toapis", task_id="a"), outcomes.callback("a"), initial=done)
        assert outcomes.calls == {}  # not from inside watch()
        await vt.advance(1.0)

    await with_driver(sched, body)
    assert outcomes.values["a"] is done
    assert outcomes.times["a"] == pytest.approx(1.0)
    assert provider.polls == {}


async def test_on_done_exactly_once_per_task_under_mixed_faults() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=0.05, queue_fraction=0.2)
    sched = make_scheduler(vt, provider, PollPolicy(max_poll_errors=3, max_in_flight=4))
    rng = random.Random(11)
    jobs = lognormal_jobs(300, median=6.0)
    statuses = [TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.MODERATED, TaskStatus.NOT_FOUND]
    for job in jobs.values():
        job.status = rng.choice(statuses)
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            job.errors.append(
                rng.choice(
                    [
                        TransportError("reset"),
                        ServerError("bad gateway", status=502),
                        RateLimitError("slow", retry_after=0.5),
                    ]
                )
            )
    jobs["t0"].errors = [AuthenticationError("revoked", status=403)]

    async def body() -> Outcomes:
        outcomes = await run_jobs(vt, sched, provider, jobs)
        await vt.advance(60.0)
        return outcomes

    outcomes = await with_driver(sched, body)
    assert set(outcomes.calls) == set(jobs)
    assert set(outcomes.calls.values()) == {1}
    assert sched.outstanding() == []
    for task_id, value in outcomes.values.items():
        if isinstance(value, TaskState):
            assert value.terminal
            assert value.status is jobs[task_id].status


# -- when to poll: hints and learning ---------------------------------------------------------------


@given(
    duration=st.floats(min_value=0.5, max_value=600.0),
    queue=st.floats(min_value=0.0, max_value=0.6),
    rounding=st.sampled_from([math.floor, round]),
    fractions=st.lists(st.floats(min_value=0.001, max_value=0.999), min_size=1, max_size=8),
)
def test_the_progress_window_always_contains_the_completion(
    duration: float, queue: float, rounding: Callable[[float], int], fractions: list[float]
) -> None:
    """Whatever the queue before progress starts and however percents are rounded, the
    completion time lies in the window the reports allow (checked after every report)."""
    rec = WatchState(0.0)
    for fraction in sorted(set(fractions)):
        t = fraction * duration
        running = max(0.0, (t - queue * duration) / (duration - queue * duration))
        state = TaskState(
            task_id="a", status=TaskStatus.RUNNING, raw_status="x", progress=rounding(100 * running)
        )
        observe(rec, state, t)
        lo, hi = window(rec)
        assert lo - 1e-6 * duration <= duration <= hi + 1e-6 * duration


async def test_progress_puts_polls_just_after_completion() -> None:
    """The benchmark's workload, scaled down: 500 log-normal jobs (median 10 s, sigma 0.35)
    reporting integer progress after a queue, cold start. Against a fixed 0.5 s poller: no worse
    p50 delay, and at least 3x fewer polls."""
    vt = VirtualTime()
    latency = 0.02
    provider = FakeProvider(vt, latency=latency, queue_fraction=0.2)
    policy = PollPolicy()
    sched = make_scheduler(vt, provider, policy)
    jobs = lognormal_jobs(500)

    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    late = delays(outcomes, jobs)
    assert min(late) >= 0
    ours = polls_per_job(provider, jobs)
    fixed_polls, fixed_p50 = fixed_poller(jobs, 0.5, latency)
    assert ours <= 6
    assert statistics.median(late) <= min(policy.target_delay, fixed_p50)
    assert ours * 3 <= fixed_polls
    assert late[int(0.99 * len(late))] <= policy.target_delay + latency + policy.quantum
    stats = sched.statistics()
    assert stats.finished == 500
    assert stats.polls_per_finished == pytest.approx(ours)
    # No fixed-interval poller beats it on both axes at once.
    for interval in (0.1, 0.5, 1.0, 3.0):
        polls, p50 = fixed_poller(jobs, interval, latency)
        assert polls > ours or p50 > statistics.median(late)


async def test_progress_after_an_unseen_queue_is_not_trusted_from_submission() -> None:
    """A first report of 20% at 3.6 s, after a 2 s queue, must not be extrapolated from the
    submission (which would predict ~18 s): the second report gives the slope."""
    vt = VirtualTime()
    provider = FakeProvider(vt, queue_fraction=0.2)
    sched = make_scheduler(vt, provider, PollPolicy(first_poll=3.6, quantum=0.0))
    jobs = {"a": Job(start=0.0, duration=10.0)}

    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    assert 0 <= outcomes.times["a"] - 10.0 <= 0.5
    assert len(provider.polls["a"]) <= 5


async def test_short_jobs_are_noticed_quickly() -> None:
    vt = VirtualTime()
    latency = 0.02
    provider = FakeProvider(vt, latency=latency, queue_fraction=0.2)
    sched = make_scheduler(vt, provider)
    jobs = lognormal_jobs(300, median=2.0, sigma=0.3)

    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    assert polls_per_job(provider, jobs) <= 3.5
    assert statistics.median(delays(outcomes, jobs)) <= 0.25


async def two_batches(*, estimate: bool) -> tuple[float, list[float]]:
    """Polls per job and sorted delays of the second of two 300-job batches without progress,
    with an exact ``estimated_time`` or none."""
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider)
    first = lognormal_jobs(300, prefix="a")
    second = lognormal_jobs(300, prefix="b", seed=8)
    if estimate:
        for job in [*first.values(), *second.values()]:
            job.estimated_time = job.duration  # apimart-style: total seconds, here exact

    async def body() -> Outcomes:
        await run_jobs(vt, sched, provider, first)
        await vt.advance(30.0)
        return await run_jobs(vt, sched, provider, second)

    outcomes = await with_driver(sched, body)
    return polls_per_job(provider, second), delays(outcomes, second)


async def test_estimated_time_is_trusted_once_it_proves_right() -> None:
    polls, late = await two_batches(estimate=True)
    blind_polls, blind_late = await two_batches(estimate=False)
    # The estimate only comes with the first poll, which the learned durations place.
    assert polls <= 4.5 < blind_polls
    assert statistics.median(late) < min(0.4, statistics.median(blind_late))
    assert late[int(0.99 * len(late))] < min(0.9, blind_late[int(0.99 * len(blind_late))])


async def test_a_useless_estimated_time_does_no_harm() -> None:
    """A constant estimate (apimart's example says 60 s for a 19 s job) must not beat the
    learned distribution."""
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider)
    first = lognormal_jobs(300, prefix="a")
    second = lognormal_jobs(300, prefix="b", seed=8)
    for job in [*first.values(), *second.values()]:
        job.estimated_time = 30.0

    async def body() -> Outcomes:
        await run_jobs(vt, sched, provider, first)
        await vt.advance(30.0)
        return await run_jobs(vt, sched, provider, second)

    outcomes = await with_driver(sched, body)
    late = delays(outcomes, second)
    assert statistics.median(late) <= 0.7
    assert late[int(0.99 * len(late))] <= 2.5


async def test_learned_durations_make_the_second_batch_cheaper() -> None:
    """No progress, no estimate: the first batch of a model starts with a blind backoff (and
    learns as its first jobs finish); the second polls around the learned durations from the
    start: fewer polls than a 0.5 s poller, and no job noticed seconds late."""
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider)
    first = lognormal_jobs(300, median=10.0, sigma=0.2, prefix="a")
    second = lognormal_jobs(300, median=10.0, sigma=0.2, prefix="b", seed=8)

    async def body() -> tuple[Outcomes, Outcomes]:
        one = await run_jobs(vt, sched, provider, first)
        await vt.advance(60.0)
        return one, await run_jobs(vt, sched, provider, second)

    one, two = await with_driver(sched, body)
    assert polls_per_job(provider, second) < fixed_poller(second, 0.5, 0.0)[0]
    late_one, late_two = delays(one, first), delays(two, second)
    assert late_two[int(0.99 * len(late_two))] < late_one[int(0.99 * len(late_one))] / 2
    assert statistics.median(late_two) <= PollPolicy().target_delay + PollPolicy().quantum


async def test_learning_is_per_provider_and_model() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider, PollPolicy(quantum=0.0))
    slow = lognormal_jobs(50, median=30.0, sigma=0.1, prefix="s")
    for job in slow.values():
        job.model = "flux-kontext-max"

    async def body() -> None:
        await run_jobs(vt, sched, provider, slow)
        await vt.advance(10.0)
        await run_jobs(vt, sched, provider, {"other": Job(start=0.0, duration=0.5)})

    await with_driver(sched, body)
    # A different model knows nothing yet: the blind first poll after 1 s, not at ~25 s.
    assert provider.polls["other"] == [pytest.approx(provider.jobs["other"].start + 1.0)]


async def test_a_task_stuck_at_100_percent_is_polled_less_and_less() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt)
    outcomes = Outcomes(vt)

    async def stuck(ref: TaskRef) -> TaskState:
        now = vt.clock()
        provider.polls.setdefault(ref.task_id, []).append(now)
        if now >= 60.0:
            return TaskState(task_id="a", status=TaskStatus.SUCCEEDED, raw_status="completed")
        progress = min(100.0, math.floor(100 * now / 5.0))  # claims done at 5 s
        return TaskState(
            task_id="a", status=TaskStatus.RUNNING, raw_status="in_progress", progress=progress
        )

    sched = make_scheduler(vt, provider, PollPolicy(quantum=0.0), poll=stuck)

    async def body() -> None:
        sched.watch(
            TaskRef(provider="toapis", task_id="a"), outcomes.callback("a"), submitted_at=0.0
        )
        await vt.run_until(120.0)

    await with_driver(sched, body)
    assert isinstance(outcomes.values["a"], TaskState)
    assert len(provider.polls["a"]) <= 30  # a 0.2 s poller would have sent ~300
    assert outcomes.times["a"] - 60.0 <= sched.policy.max_interval


# -- statistics and memory ---------------------------------------------------------------------------


async def test_statistics_count_what_happened() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    policy = PollPolicy(first_poll=1.0, backoff=1.0, max_interval=1.0, jitter=0.0, quantum=0.0)
    sched = make_scheduler(vt, provider, policy)
    jobs = {
        "ok": Job(start=0.0, duration=2.5),  # polls at 1, 2, 3
        "flaky": Job(start=0.0, duration=1.5, errors=[ServerError("x", status=500)]),
        "limited": Job(
            start=0.0, duration=0.5, provider="bfl", errors=[RateLimitError("x", retry_after=2)]
        ),
        "denied": Job(start=0.0, duration=9.0, errors=[AuthenticationError("x", status=401)]),
    }
    assert sched.statistics() == SchedulerStatistics(
        outstanding=0,
        in_flight=0,
        polls_sent=0,
        polls_failed=0,
        retries=0,
        rate_limited=0,
        finished=0,
        gave_up=0,
        timed_out=0,
        wakeups=0,
        polls_per_finished=0.0,
        lag_p50=0.0,
        lag_p99=0.0,
        max_lag=0.0,
    )

    async def body() -> SchedulerStatistics:
        await run_jobs(vt, sched, provider, jobs)
        return sched.statistics()

    stats = await with_driver(sched, body)
    assert stats.outstanding == 0
    assert stats.in_flight == 0
    assert stats.polls_sent == 3 + 2 + 2 + 1
    assert stats.polls_failed == 3
    assert stats.retries == 2
    assert stats.rate_limited == 1
    assert stats.finished == 4
    assert stats.gave_up == 1
    assert stats.timed_out == 0
    assert stats.polls_per_finished == pytest.approx(8 / 4)
    assert stats.wakeups >= 3
    assert stats.max_lag == stats.lag_p99 == stats.lag_p50 == 0.0  # never waited for a slot


async def test_memory_per_outstanding_task_is_under_one_kib() -> None:
    """10,000 watched tasks, each polled once (so each holds the state a poll leaves behind):
    the scheduler's whole footprint, bookkeeping dicts included, is under 1 KiB per task."""
    n = 10_000
    vt = VirtualTime()
    running = TaskState(
        task_id="x", status=TaskStatus.RUNNING, raw_status="in_progress", progress=12.0
    )

    async def poll(ref: TaskRef) -> TaskState:
        return running

    refs = [
        TaskRef(provider="toapis", task_id=f"task-{i:05d}", model="flux-kontext-pro")
        for i in range(n)
    ]

    def on_done(value: TaskState | BaseException) -> None:
        raise AssertionError("nothing finishes in this test")

    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        sched = PollScheduler(
            poll, clock=vt.clock, sleep=vt.sleep, policy=PollPolicy(max_in_flight=64)
        )
        for ref in refs:
            sched.watch(ref, on_done, submitted_at=0.0)

        async def body() -> int:
            await vt.run_until(1.2)  # every task has been polled once (at 1 s) and rescheduled
            assert sched.statistics().polls_sent == n
            assert len(sched.outstanding()) == n
            current, _ = tracemalloc.get_traced_memory()
            return current

        after = await with_driver(sched, body)
    finally:
        tracemalloc.stop()
    per_task = (after - before) / n
    assert per_task <= 1024, f"{per_task:.0f} bytes per outstanding task"


# -- the virtual clock itself -----------------------------------------------------------------------


async def test_virtual_time_wakes_sleepers_in_order_without_real_waiting() -> None:
    vt = VirtualTime()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, delay: float) -> None:
        await vt.sleep(delay)
        woke.append((name, vt.clock()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, "b", 2.0)
        tg.start_soon(sleeper, "a", 1.0)
        tg.start_soon(sleeper, "never", math.inf)
        await vt.run_until(1.5)
        assert woke == [("a", 1.0)]
        assert vt.clock() == 1.5
        await vt.advance(10.0)
        assert woke == [("a", 1.0), ("b", 2.0)]
        tg.cancel_scope.cancel()


async def test_virtual_time_forgets_a_cancelled_sleeper() -> None:
    vt = VirtualTime()
    with anyio.move_on_after(0):  # cancelled at its first checkpoint: the sleep itself
        await vt.sleep(5.0)
    assert vt.next_wakeup() == math.inf


async def test_the_first_belief_brings_forward_polls_planned_by_the_blind_backoff() -> None:
    """A new model's blind backoff polls at 1, 2.5, 4.75 and 8.125 s. A hundred 6 s jobs are
    waiting for that last poll when three quick jobs of the same model, submitted later, are
    found done (at 5.5 s): the model's first belief re-plans the hundred, and they are noticed
    within 1.5 target delays instead of two seconds late."""
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    policy = PollPolicy(jitter=0.0, quantum=0.0)
    sched = make_scheduler(vt, provider, policy)
    jobs = {f"slow{i}": Job(start=0.0, duration=6.0 + 0.001 * i) for i in range(100)}
    jobs.update({f"quick{i}": Job(start=3.0, duration=1.2 + 0.05 * i) for i in range(3)})

    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    assert provider.polls["slow0"][:3] == [pytest.approx(t) for t in (1.0, 2.5, 4.75)]
    assert [outcomes.times[f"quick{i}"] for i in range(3)] == [pytest.approx(5.5)] * 3
    slow = [outcomes.times[t] - job.end for t, job in jobs.items() if t.startswith("slow")]
    assert max(slow) <= 1.5 * policy.target_delay + 1e-6
    assert all(isinstance(v, TaskState) for v in outcomes.values.values())


async def test_without_progress_a_batch_beats_a_half_second_poller_on_both_axes() -> None:
    """No progress, nothing learned before the batch: fewer requests than polling every 0.5 s,
    a median delay no longer than its median, and a tail within twice its worst."""
    vt = VirtualTime()
    latency = 0.01
    provider = FakeProvider(vt, latency=latency, progress=False)
    sched = make_scheduler(vt, provider)
    jobs = lognormal_jobs(600, median=10.0, sigma=0.35, spread=2.0, seed=3)

    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    fixed_polls, fixed_p50 = fixed_poller(jobs, 0.5, latency)
    late = delays(outcomes, jobs)
    assert polls_per_job(provider, jobs) < 0.8 * fixed_polls
    assert statistics.median(late) <= fixed_p50
    assert late[int(0.99 * len(late))] <= 2 * (0.5 + latency)


# -- wake-ups (webhooks) and push-expected watches -------------------------------------------------

Event = tuple[float, str, str | None]  # (virtual time, task id, event id)


def succeeded(value: TaskState | BaseException) -> bool:
    return isinstance(value, TaskState) and value.status is TaskStatus.SUCCEEDED


async def deliver(vt: VirtualTime, sched: PollScheduler, events: list[Event]) -> list[bool]:
    """Call ``sched.wake`` at each event's virtual time, in order; what each call returned."""
    returned = []
    for t, task_id, event_id in sorted(events, key=lambda event: event[0]):
        await vt.sleep(t - vt.clock())
        returned.append(sched.wake(task_id, event_id=event_id))
    return returned


async def with_webhooks(
    vt: VirtualTime,
    sched: PollScheduler,
    provider: FakeProvider,
    jobs: dict[str, Job],
    events: list[Event],
) -> tuple[Outcomes, list[bool]]:
    """Run ``jobs`` watched with ``push=True`` (from a fresh clock at 0) while ``events`` are
    delivered; returns the outcomes and what each wake returned."""
    assert vt.clock() == 0.0
    returned: list[bool] = []

    async def webhooks() -> None:
        returned.extend(await deliver(vt, sched, events))

    async def body() -> Outcomes:
        async with anyio.create_task_group() as tg:
            tg.start_soon(webhooks)
            outcomes = await run_jobs(vt, sched, provider, jobs, push=True)
            await vt.run_until(max((t for t, _, _ in events), default=0.0) + 1.0)
        return outcomes

    outcomes = await with_driver(sched, body)
    return outcomes, returned


async def test_push_watches_whose_webhooks_are_lost_are_polled_sparsely_and_still_finish() -> None:
    """Every webhook lost. Nothing learned yet: each task is polled once, at the fallback delay.
    Once the model is learned: once, at the late tail of its durations, where a watch without
    push polls it a dozen times; every task still finishes, the slowest ones within a quarter
    of their age."""
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    policy = PollPolicy()
    sched = make_scheduler(vt, provider, policy)
    first = lognormal_jobs(100, seed=2, prefix="first")
    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, first, push=True))
    assert all(len(provider.polls[t]) == 1 for t in first)
    fallback = policy.push_fallback_delay
    assert all(  # jittered only later
        fallback <= outcomes.times[t] - job.start <= fallback * (1 + policy.jitter) + 0.03
        for t, job in first.items()
    )

    normal = lognormal_jobs(300, seed=3, prefix="normal")
    await with_driver(sched, lambda: run_jobs(vt, sched, provider, normal))
    pushed = lognormal_jobs(300, seed=4, prefix="pushed")
    pushed["slow"] = Job(start=0.0, duration=200.0)  # far beyond anything learned
    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, pushed, push=True))

    assert all(succeeded(value) for value in outcomes.values.values())
    pushed_polls = polls_per_job(provider, {t: j for t, j in pushed.items() if t != "slow"})
    assert pushed_polls <= 1.05
    assert polls_per_job(provider, normal) > 8 * pushed_polls
    late = delays(outcomes, pushed)
    assert statistics.median(late) < 15.0  # the tail of a 10 s median: the safety net's price
    assert outcomes.times["slow"] - pushed["slow"].start <= 1.25 * 200.0 * (1 + policy.jitter)
    assert len(provider.polls["slow"]) <= 12  # the safety poll at ~22 s, then x1.25 to 200 s


async def test_a_wake_polls_the_task_now_and_it_finishes_after_exactly_one_poll() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider, PollPolicy(quantum=0.0))
    jobs = {"a": Job(start=0.0, duration=5.0)}
    outcomes, returned = await with_webhooks(vt, sched, provider, jobs, [(5.1, "a", "evt-1")])
    assert returned == [True]
    assert provider.polls["a"] == [pytest.approx(5.1)]
    assert outcomes.times["a"] == pytest.approx(5.1)
    assert isinstance(outcomes.values["a"], TaskState)
    stats = sched.statistics()
    assert (stats.wakes_received, stats.wakes_moved, stats.wakes_ignored) == (1, 1, 0)
    assert stats.polls_sent == 1


async def test_duplicate_event_ids_and_repeated_wakes_cost_no_extra_poll() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider, PollPolicy(quantum=0.0))
    jobs = {"a": Job(start=0.0, duration=5.0), "b": Job(start=0.0, duration=8.0)}
    events: list[Event] = [
        (2.0, "b", "early"),  # an event before the completion (forged): one poll, finds it running
        (2.0, "b", "early"),  # the same id at once
        (2.0, "b", None),  # a wake while the first one's poll is still pending
        (3.0, "b", "early"),  # a replay after that poll
        (5.1, "a", "a-done"),
        (5.1, "a", "a-done"),
        (5.1, "a", "a-done-again"),  # another id, same task, poll still pending
        (5.1, "a", None),
        (6.0, "a", "a-done"),  # a replay once the task is done: no longer watched
    ]
    outcomes, returned = await with_webhooks(vt, sched, provider, jobs, events)
    assert returned == [True, False, False, False, True, False, False, False, False]
    assert provider.polls["a"] == [pytest.approx(5.1)]
    assert provider.polls["b"][0] == pytest.approx(2.0)  # then only its safety net
    assert len(provider.polls["b"]) == 2
    assert all(isinstance(value, TaskState) for value in outcomes.values.values())
    stats = sched.statistics()
    assert (stats.wakes_received, stats.wakes_moved, stats.wakes_ignored) == (9, 2, 7)


async def test_a_wake_for_an_unknown_task_returns_false_and_polls_nothing() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, progress=False)
    sched = make_scheduler(vt, provider)
    jobs = {"a": Job(start=0.0, duration=5.0)}
    events: list[Event] = [(1.0, "forged", "x"), (1.0, "forged", None), (1.5, "a", "x")]
    outcomes, returned = await with_webhooks(vt, sched, provider, jobs, events)
    # The unknown task's event id was not remembered: the same id for a watched task counts.
    assert returned == [False, False, True]
    assert "forged" not in provider.polls
    assert provider.polls["a"][0] == pytest.approx(1.5, abs=0.03)
    assert sched.wake("a") is False  # done by now: no longer watched
    stats = sched.statistics()
    assert (stats.wakes_received, stats.wakes_moved, stats.wakes_ignored) == (4, 1, 3)
    assert isinstance(outcomes.values["a"], TaskState)


@pytest.mark.parametrize(
    ("duration", "polls"),
    [
        (4.2, [4.5]),  # done when the poll in flight looked: it answers the wake
        (4.7, [4.5, 5.5]),  # still running then: one follow-up poll, after the answer
    ],
)
async def test_a_wake_while_the_task_is_polled_does_not_poll_it_twice_at_once(
    duration: float, polls: list[float]
) -> None:
    """The safety poll is sent at 4.0 and answered at 5.0 (1 s of latency); the webhook comes
    at 4.8, while it is in flight."""
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=1.0, progress=False)
    policy = PollPolicy(quantum=0.0, jitter=0.0, push_fallback_delay=4.0)
    sched = make_scheduler(vt, provider, policy)
    jobs = {"a": Job(start=0.0, duration=duration)}
    events: list[Event] = [(4.8, "a", "evt"), (4.9, "a", "evt-2")]
    outcomes, returned = await with_webhooks(vt, sched, provider, jobs, events)
    assert returned == [False, False]
    assert provider.polls["a"] == [pytest.approx(t) for t in polls]
    assert provider.max_in_flight == 1
    assert outcomes.times["a"] == pytest.approx(polls[-1] + 0.5)
    assert sched.statistics().wakes_ignored == 2


async def test_a_flood_of_forged_event_ids_costs_at_most_one_poll_per_min_interval() -> None:
    """10,000 distinct event ids for one running task over 10 s (one a millisecond)."""
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=0.01, progress=False)
    policy = PollPolicy(quantum=0.0, min_interval=0.2)
    sched = make_scheduler(vt, provider, policy)
    jobs = {"a": Job(start=0.0, duration=100.0)}
    events: list[Event] = [(1.0 + 0.001 * i, "a", f"forged-{i}") for i in range(10_000)]
    outcomes, returned = await with_webhooks(vt, sched, provider, jobs, events)
    flood = [t for t in provider.polls["a"] if t < 11.0 + policy.min_interval + 0.02]
    assert len(flood) <= 10.0 / policy.min_interval + 1
    assert all(b - a >= policy.min_interval - 1e-9 for a, b in itertools.pairwise(flood))
    assert sum(returned) == len(flood)
    assert len(sched._wakes.events) == EVENT_MEMORY  # bounded: the oldest ids were forgotten
    stats = sched.statistics()
    assert stats.wakes_received == 10_000
    assert stats.wakes_moved + stats.wakes_ignored == 10_000
    assert isinstance(outcomes.values["a"], TaskState)  # and the task still finishes


async def test_with_a_fifth_of_the_webhooks_lost_every_task_finishes() -> None:
    """1,000 tasks watched with push, each webhook arriving 50 ms after its completion, one in
    five never: those delivered are confirmed by one poll and noticed within one quantum of
    their webhook; the lost ones are found by the safety net."""
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=0.01, progress=False)
    policy = PollPolicy()
    sched = make_scheduler(vt, provider, policy)
    jobs = lognormal_jobs(1000, seed=5)
    rng = random.Random(9)
    lost = {t for t in jobs if rng.random() < 0.2}
    events: list[Event] = [
        (job.end + 0.05, t, f"evt-{t}") for t, job in jobs.items() if t not in lost
    ]
    outcomes, returned = await with_webhooks(vt, sched, provider, jobs, events)
    assert len(outcomes.values) == 1000
    assert all(succeeded(value) for value in outcomes.values.values())
    delivered = {t: job for t, job in jobs.items() if t not in lost}
    assert polls_per_job(provider, delivered) <= 1.05
    late = delays(outcomes, delivered)
    assert statistics.median(late) <= 0.05 + policy.quantum + 0.01 + 1e-9
    assert sum(returned) >= 0.95 * len(delivered)


# -- polls that wait for a connection by turns (a gate) -------------------------------------------


class FakeGate:
    """A pool of ``size`` connections: polls wait for one by turns in its queue, as in the aiohttp
    transport's (a turn is called when a connection comes to its place)."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.queue: list[Callable[[], bool]] = []
        self.turns_taken = 0

    def take_connection(self) -> bool:
        if self.free:
            self.free -= 1
            return True
        return False

    def queue_turn(self, turn: Callable[[], bool]) -> None:
        self.queue.append(turn)

    def let_go(self) -> None:
        while self.queue:
            if self.queue.pop(0)():
                self.turns_taken += 1
                return
        self.free += 1


def gated_scheduler(
    vt: VirtualTime, provider: FakeProvider, gate: FakeGate, policy: PollPolicy
) -> PollScheduler:
    async def poll_held(ref: TaskRef, held: FakeGate) -> TaskState:
        assert held is gate
        try:
            return await provider.poll(ref)
        finally:
            held.let_go()  # as the transport lets the connection go when the request ends

    sched = make_scheduler(vt, provider, policy)
    sched.use_gate(gate, poll_held)
    return sched


async def test_polls_on_a_gate_never_outnumber_its_connections_and_all_finish() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=0.3)
    gate = FakeGate(3)
    sched = gated_scheduler(vt, provider, gate, PollPolicy(max_in_flight=8))
    jobs = lognormal_jobs(200, median=4.0, spread=0.1)

    outcomes = await with_driver(sched, lambda: run_jobs(vt, sched, provider, jobs))
    assert len(outcomes.values) == 200
    assert all(isinstance(v, TaskState) for v in outcomes.values.values())
    assert provider.max_in_flight == 3  # on the gate's connections only
    assert gate.turns_taken > 0  # polls waited for a connection in its queue, by turns
    assert gate.free == 3  # every connection taken was let go


async def test_a_stopped_scheduler_leaves_its_places_in_the_queue_empty_handed() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=0.1)
    gate = FakeGate(1)
    assert gate.take_connection()  # held by someone else: every poll must wait its turn
    sched = gated_scheduler(vt, provider, gate, PollPolicy(first_poll=0.5, quantum=0.0))
    jobs = {f"t{i}": Job(start=0.0, duration=0.2) for i in range(4)}
    outcomes = Outcomes(vt)

    async def stop_while_waiting() -> None:
        for task_id, job in jobs.items():
            provider.jobs[task_id] = job
            sched.watch(ref_for(task_id, job), outcomes.callback(task_id))
        await vt.advance(1.0)
        assert len(gate.queue) == 4  # four orders wait in the queue, no poll was sent
        assert not provider.polls

    await with_driver(sched, stop_while_waiting)
    gate.let_go()  # the places come up after the stop: none takes the connection
    assert gate.free == 1
    assert not gate.queue
    assert sched.statistics().outstanding == 4  # still watched, back in the heap

    await with_driver(sched, lambda: vt.advance(5.0))
    assert sorted(outcomes.values) == sorted(jobs)  # the next run polled them all
    assert gate.free == 1


async def test_an_order_unwatched_while_it_waits_for_a_connection_frees_its_slot() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=0.1)
    gate = FakeGate(1)
    assert gate.take_connection()
    sched = gated_scheduler(vt, provider, gate, PollPolicy(first_poll=0.5, quantum=0.0, max_in_flight=1))
    outcomes = Outcomes(vt)
    for task_id in ("a", "b"):
        provider.jobs[task_id] = Job(start=0.0, duration=0.2)

    async def body() -> None:
        sched.watch(ref_for("a", provider.jobs["a"]), outcomes.callback("a"))
        sched.watch(ref_for("b", provider.jobs["b"]), outcomes.callback("b"))
        await vt.advance(1.0)
        assert len(gate.queue) == 1  # a waits for the connection; b for a slot
        assert sched.unwatch("a")
        gate.let_go()  # a's place comes up: a is gone, its slot goes to b
        await vt.advance(2.0)

    await with_driver(sched, body)
    assert list(outcomes.values) == ["b"]
    assert "a" not in provider.polls
    assert gate.free == 1


async def test_a_stopped_scheduler_gives_back_every_connection_it_took() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=100.0)  # polls still on the wire when it stops
    gate = FakeGate(2)
    sched = gated_scheduler(vt, provider, gate, PollPolicy(first_poll=0.5, quantum=0.0))
    outcomes = Outcomes(vt)

    async def stop_with_polls_on_the_wire() -> None:
        for i in range(5):
            job = provider.jobs[f"t{i}"] = Job(start=0.0, duration=1.0)
            sched.watch(ref_for(f"t{i}", job), outcomes.callback(f"t{i}"))
        await vt.advance(1.0)
        assert provider.in_flight == 2  # both connections carry a poll
        assert gate.free == 0
        assert len(gate.queue) == 3  # the other three wait their turn

    await with_driver(sched, stop_with_polls_on_the_wire)
    assert provider.in_flight == 0
    assert gate.free == 2  # the two polls' connections came back; no order kept one
    assert not outcomes.values
    assert sched.statistics().outstanding == 5  # all still watched, for the next run


# -- helpers: tasks that send the polls their own requests' connections go to --------------------


def recording_gated_scheduler(
    vt: VirtualTime, provider: FakeProvider, gate: FakeGate, policy: PollPolicy
) -> tuple[PollScheduler, list[asyncio.Task[object] | None]]:
    """A gated scheduler whose polls record the task that sent each."""
    senders: list[asyncio.Task[object] | None] = []

    async def poll_held(ref: TaskRef, held: FakeGate) -> TaskState:
        senders.append(asyncio.current_task())
        try:
            return await provider.poll(ref)
        finally:
            held.let_go()

    sched = make_scheduler(vt, provider, policy)
    sched.use_gate(gate, poll_held)
    return sched, senders


async def test_a_helper_sends_the_poll_its_request_let_the_connection_go_to() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=0.1)
    gate = FakeGate(1)
    sched, senders = recording_gated_scheduler(vt, provider, gate, PollPolicy(first_poll=0.5, quantum=0.0))
    job = provider.jobs["a"] = Job(start=0.0, duration=0.2)
    outcomes = Outcomes(vt)
    helpers: list[asyncio.Task[object] | None] = []

    async def helper() -> None:
        with sched.helping():
            helpers.append(asyncio.current_task())
            gate.let_go()  # its request ends: the connection goes to the poll's place
            assert len(sched.orders) == 1
            await sched.send_orders()  # sent here, at once
            assert not sched.orders

    async def body() -> None:
        assert gate.take_connection()  # the helper's request holds the one connection
        sched.watch(ref_for("a", job), outcomes.callback("a"))
        await vt.advance(1.0)
        assert len(gate.queue) == 1  # the due poll keeps a place in the pool's queue
        wakeups = sched.statistics().wakeups
        async with anyio.create_task_group() as tg:
            tg.start_soon(helper)
            await vt.advance(1.0)
        # Nobody else was bothered for it: no worker was started or woken through the driver.
        assert sched.statistics().wakeups == wakeups

    await with_driver(sched, body)
    assert senders == helpers
    assert isinstance(outcomes.values["a"], TaskState)
    assert gate.free == 1


async def test_an_order_its_helper_does_not_send_in_its_turn_goes_to_a_worker() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=0.1)
    gate = FakeGate(1)
    sched, senders = recording_gated_scheduler(vt, provider, gate, PollPolicy(first_poll=0.5, quantum=0.0))
    job = provider.jobs["a"] = Job(start=0.0, duration=0.2)
    outcomes = Outcomes(vt)

    async def body() -> None:
        with sched.helping():
            assert gate.take_connection()
            sched.watch(ref_for("a", job), outcomes.callback("a"))
            await vt.advance(1.0)
            released = vt.clock()
            gate.let_go()
            await vt.advance(5.0)  # the helper awaits something else (a slow ledger, a retry's wait)
        assert len(senders) == 1
        assert senders[0] is not asyncio.current_task()  # a worker sent it
        assert provider.polls["a"] == [pytest.approx(released + 0.05)]  # without delay
        assert isinstance(outcomes.values["a"], TaskState)

    await with_driver(sched, body)
    assert gate.free == 1


async def test_a_helper_cancelled_mid_poll_gives_back_its_slot_and_the_task_is_polled_again() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=10.0)
    gate = FakeGate(1)
    policy = PollPolicy(first_poll=0.5, quantum=0.0, max_in_flight=1)
    sched, senders = recording_gated_scheduler(vt, provider, gate, policy)
    job = provider.jobs["a"] = Job(start=0.0, duration=0.2)
    outcomes = Outcomes(vt)

    async def helper() -> None:
        with sched.helping():
            gate.let_go()  # its request ends: the connection goes to the waiting poll
            await sched.send_orders()

    async def body() -> None:
        assert gate.take_connection()
        sched.watch(ref_for("a", job), outcomes.callback("a"))
        await vt.advance(1.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(helper)
            await vt.advance(1.0)
            assert provider.in_flight == 1  # the helper's poll is on the wire
            cancelled = vt.clock()
            tg.cancel_scope.cancel()  # e.g. its batch stops
        # max_in_flight=1: only the slot its poll gave back lets the task be polled again, now.
        await vt.advance(30.0)
        # (The first poll never reached the provider: cancelled on its way.)
        assert provider.polls["a"] == [pytest.approx(cancelled + 5.0)]
        assert sched.statistics().in_flight == 0

    await with_driver(sched, body)
    assert isinstance(outcomes.values["a"], TaskState)
    assert outcomes.calls["a"] == 1
    assert len(senders) == 2
    assert senders[1] is not senders[0]  # polled again, by a worker
    assert gate.free == 1  # every connection back in the pool


async def test_a_helpers_poll_that_outlives_the_run_leaves_the_next_run_correct() -> None:
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=10.0)
    gate = FakeGate(1)
    policy = PollPolicy(first_poll=0.5, quantum=0.0, max_in_flight=1)
    sched, _ = recording_gated_scheduler(vt, provider, gate, policy)
    for task_id in ("a", "b"):
        provider.jobs[task_id] = Job(start=0.0, duration=0.2)
    outcomes = Outcomes(vt)
    go = anyio.Event()

    async def helper() -> None:
        await go.wait()
        with sched.helping():
            gate.let_go()
            await sched.send_orders()  # its poll answers after the run that ordered it ended

    async def body() -> None:
        assert gate.take_connection()
        for task_id in ("a", "b"):
            sched.watch(ref_for(task_id, provider.jobs[task_id]), outcomes.callback(task_id))
        await vt.advance(1.0)  # a's poll waits for the connection; b for a slot
        go.set()
        await vt.advance(1.0)
        assert provider.in_flight == 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(helper)
        await with_driver(sched, body)  # the run ends with the helper's poll on the wire
        await vt.advance(20.0)  # it answers now: no run to dispatch for, nothing raised
    assert sched.statistics().in_flight == 0
    assert sorted(outcomes.values) == ["a"]
    await with_driver(sched, lambda: vt.advance(30.0))  # the next run has its one slot for b
    assert sorted(outcomes.values) == ["a", "b"]
    assert gate.free == 1


async def test_a_poll_on_a_free_connection_waits_a_turn_for_a_helper_and_then_a_worker() -> None:
    # While a helper is about, a due poll that got a free connection is left for it for one turn
    # of the loop: a helper whose request ends then sends it, no worker is started for it; when
    # none comes back for it, a worker sends it the next turn (no virtual time lost either way).
    vt = VirtualTime()
    provider = FakeProvider(vt, latency=0.1)
    gate = FakeGate(2)
    policy = PollPolicy(first_poll=1.0, quantum=0.0)
    sched, senders = recording_gated_scheduler(vt, provider, gate, policy)
    for task_id in ("a", "b"):
        provider.jobs[task_id] = Job(start=0.0, duration=0.5)
    outcomes = Outcomes(vt)
    helpers: list[asyncio.Task[object] | None] = []
    stop = anyio.Event()

    async def helper() -> None:
        with sched.helping():
            helpers.append(asyncio.current_task())
            # Its request ends just as a's poll falls due (it went to sleep after the driver).
            await vt.sleep(1.0)
            await sched.send_orders()
            await stop.wait()  # then about, but busy elsewhere: b's poll is not left waiting

    async def body() -> None:
        sched.watch(ref_for("a", provider.jobs["a"]), outcomes.callback("a"))
        await vt.settle()  # the driver rests until a's poll is due
        async with anyio.create_task_group() as tg:
            tg.start_soon(helper)
            await vt.advance(1.5)
            assert senders == helpers  # a's poll: sent by the helper...
            assert sched._workers == 0  # ...and no worker started for it
            sched.watch(ref_for("b", provider.jobs["b"]), outcomes.callback("b"))
            await vt.advance(1.5)
            stop.set()
        assert len(senders) == 2
        assert senders[1] is not helpers[0]  # b's: by a worker
        assert provider.polls["b"] == [pytest.approx(1.5 + 1.0 + 0.05)]  # on time

    await with_driver(sched, body)
    assert sorted(outcomes.values) == ["a", "b"]
    assert gate.free == 2


# -- the default clock: the running loop's -----------------------------------------------------------


class SkewedLoop(asyncio.SelectorEventLoop):
    """A loop whose clock is not time.monotonic() (as uvloop's, or a test's, may not be)."""

    def time(self) -> float:
        return 50_000.0 + super().time()


def test_the_scheduler_keeps_time_by_a_loop_whose_clock_is_its_own() -> None:
    # On the standard loops the scheduler reads time.monotonic() directly (their time() is
    # that); on any other it must read the loop's own clock: its timers are set on it, and read
    # from time.monotonic() they would be 50,000 s early (a driver that never sleeps).
    states = iter([TaskStatus.RUNNING, TaskStatus.SUCCEEDED])
    polled: list[float] = []

    async def poll(ref: TaskRef) -> TaskState:
        polled.append(asyncio.get_running_loop().time())
        status = next(states)
        return TaskState(task_id=ref.task_id, status=status, raw_status=status.value)

    async def main() -> TaskState | BaseException:
        # (Real time, the loop's own: a millisecond or two between the polls.)
        policy = PollPolicy(first_poll=0.001, min_interval=0.001, max_interval=0.002, quantum=0.0)
        sched = PollScheduler(poll, policy=policy)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[TaskState | BaseException] = loop.create_future()
        started = loop.time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sched.run)
            sched.watch(TaskRef(provider="toapis", task_id="t"), done.set_result)
            with anyio.fail_after(5):
                value = await done
            tg.cancel_scope.cancel()
        assert all(started < t < started + 5 for t in polled)
        assert sched.statistics().wakeups < 50  # it slept between the polls
        return value

    for loop in (asyncio.new_event_loop(), SkewedLoop()):
        try:
            value = loop.run_until_complete(main())
        finally:
            loop.close()
        assert isinstance(value, TaskState)
        assert value.status is TaskStatus.SUCCEEDED
        assert len(polled) == 2
        polled.clear()
        states = iter([TaskStatus.RUNNING, TaskStatus.SUCCEEDED])
