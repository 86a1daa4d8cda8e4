"""Retry discipline, end to end: bounded attempts, a total deadline, jitter inside its formula,
``Retry-After`` honoured up to a cap, and a retry budget that keeps a total outage from turning
into a storm of requests.

The pure functions of ``retry.py`` have their own tests (``test_retry.py``); here each property
is checked as a formula written out independently, and then on a real session against the
emulator, counting requests at the emulator.
"""

from __future__ import annotations

import math
import random
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flux_async import (
    GenerationRequest,
    Limits,
    Outcome,
    RateLimitError,
    ServerError,
    SubmissionUncertainError,
)
from flux_async.emulator import Emulator, FaultRates, Scenario
from flux_async.retry import (
    RetryPolicy,
    backoff_bounds,
    backoff_delay,
    retry_delay,
    should_retry,
)
from flux_async.scheduler import PollPolicy
from flux_async.session import Session

KEY = "retry-discipline-key"
FAST = PollPolicy(
    target_delay=0.02, first_poll=0.01, min_interval=0.005, quantum=0.005, max_interval=0.05
)

# -- jitter and backoff: the formula, as a property ---------------------------------------------

policies = st.builds(
    lambda base, spread, mult, jitter, cap: RetryPolicy(
        base_delay=base, max_delay=base * spread, multiplier=mult, jitter=jitter,
        max_retry_after=cap,
    ),
    base=st.floats(1e-4, 100.0),
    spread=st.floats(1.0, 1e4),
    mult=st.floats(1.0, 10.0),
    jitter=st.sampled_from(["full", "equal", "none"]),
    cap=st.floats(0.0, 1e4),
)


@settings(max_examples=300, deadline=None)
@given(policy=policies, attempt=st.integers(0, 2000), seed=st.integers(0, 2**32 - 1))
def test_every_delay_lies_within_its_formula(policy: RetryPolicy, attempt: int, seed: int) -> None:
    # cap = min(max_delay, base * multiplier ** attempt), computed here without the library.
    try:
        raw = policy.base_delay * policy.multiplier**attempt
    except OverflowError:
        raw = math.inf
    cap = min(policy.max_delay, raw)
    low = {"full": 0.0, "equal": cap / 2, "none": cap}[policy.jitter]
    assert backoff_bounds(policy, attempt) == pytest.approx((low, cap))
    rng = random.Random(seed)
    for _ in range(5):
        delay = backoff_delay(policy, attempt, rng)
        assert low <= delay <= cap <= policy.max_delay
        # No Retry-After: the same backoff; with one: exactly the hint, clamped to the cap.
        assert low <= retry_delay(policy, attempt, rng, retry_after=None) <= cap
    for hint in (0.5, 7.0, 1e9, math.inf):
        assert retry_delay(policy, attempt, rng, retry_after=hint) == min(hint, policy.max_retry_after)
    # A hint of 0, a negative one or NaN is no reason to retry at once: the backoff applies.
    for hint in (0.0, -3.0, math.nan):
        assert low <= retry_delay(policy, attempt, rng, retry_after=hint) <= cap
    # The ceiling never shrinks from one attempt to the next.
    assert backoff_bounds(policy, attempt + 1)[1] >= cap


@settings(max_examples=200, deadline=None)
@given(
    max_attempts=st.integers(1, 50),
    deadline=st.none() | st.floats(0.01, 1e4),
    attempts=st.integers(1, 60),
    elapsed=st.floats(0.0, 2e4),
    delay=st.floats(0.0, 1e3),
)
def test_should_retry_is_bounded_by_attempts_and_deadline(
    max_attempts: int, deadline: float | None, attempts: int, elapsed: float, delay: float
) -> None:
    policy = RetryPolicy(max_attempts=max_attempts, deadline=deadline)
    allowed = should_retry(policy, attempts=attempts, elapsed=elapsed, delay=delay)
    expected = attempts < max_attempts and (deadline is None or elapsed + delay <= deadline)
    assert allowed is expected


# -- helpers -----------------------------------------------------------------------------------


def _session(emu: Emulator, provider: str, **kwargs: Any) -> Session:
    kwargs.setdefault("poll_policy", FAST)
    return Session(provider, api_key=KEY, base_url=emu.base_url(provider), **kwargs)


def _requests(n: int, tag: str) -> list[GenerationRequest]:
    return [GenerationRequest(model="flux-kontext-pro", prompt=f"{tag} {i}") for i in range(n)]


async def _run(session: Session, requests: list[GenerationRequest]) -> list[Outcome]:
    return [outcome async for outcome in session.as_completed(requests)]


class RecordingSleep:
    """A ``sleep`` for the session that records retry waits and never waits in real time.

    Waits of more than ``forever`` seconds (the idle poll scheduler's) park until cancelled,
    which the scheduler does whenever it has something sooner to do.
    """

    def __init__(self, forever: float = 1000.0) -> None:
        self.forever = forever
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        if seconds > self.forever:
            await anyio.sleep_forever()
        self.waits.append(seconds)
        await anyio.lowlevel.checkpoint()


# -- bounded attempts --------------------------------------------------------------------------


class AutoClock:
    """A session clock that moves only when the session sleeps: every wait is recorded and
    passes at once (waits longer than ``forever``, the idle scheduler's, park instead)."""

    def __init__(self, forever: float = 1000.0) -> None:
        self.now = 0.0
        self.forever = forever
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds > self.forever:
            await anyio.sleep_forever()
        self.waits.append(seconds)
        self.now += max(seconds, 0.0)
        await anyio.lowlevel.checkpoint()


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["toapis", "apimart", "bfl"])
async def test_a_rate_limited_submit_is_retried_until_its_deadline_not_its_attempts(provider: str) -> None:
    # A 429 proves no task was made: the submit is sent again past the policy's three
    # attempts, slowed down each time, until job_timeout after its first attempt.
    policy = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.002, budget_floor=0.0)
    time = AutoClock()
    with anyio.fail_after(10):
        async with Emulator(Scenario(api_keys=(KEY,))) as emu:
            emu.fail_next("submit", "status", status=429, retry_after=0, count=1000)
            async with _session(
                emu, provider, retry_policy=policy, limits=Limits(job_timeout=30.0),
                clock=time.clock, sleep=time.sleep,
            ) as session:
                with pytest.raises(RateLimitError):
                    await session.submit(_requests(1, "kite")[0])
                stats = session.statistics()
            data = emu.stats()
    posts = data["requests"]["submit"]
    assert posts > policy.max_attempts
    assert data["tasks_created"] == 0
    assert stats.submit_attempts == posts
    assert stats.rate_limited == posts
    # Slowed down, not hammered: each wait is at least the backoff (the hint said 0), the
    # waits grow as the session's submit rate is cut, and the deadline holds.
    waits = [w for w in time.waits if w <= time.forever]
    assert len(waits) == posts - 1
    assert all(w > 0 for w in waits)
    assert waits[-1] > 10 * waits[0]
    assert time.now <= 30.0
    assert posts <= 15


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["toapis", "apimart", "bfl"])
async def test_rate_limited_submits_stop_after_max_attempts_without_any_deadline(provider: str) -> None:
    policy = RetryPolicy(
        max_attempts=3, base_delay=0.001, max_delay=0.002, budget_floor=100.0, deadline=None
    )
    time = AutoClock()
    with anyio.fail_after(10):
        async with Emulator(Scenario(api_keys=(KEY,))) as emu:
            emu.fail_next("submit", "status", status=429, retry_after=0, count=1000)
            async with _session(
                emu, provider, retry_policy=policy, limits=Limits(job_timeout=None),
                clock=time.clock, sleep=time.sleep,
            ) as session:
                with pytest.raises(RateLimitError):
                    await session.submit(_requests(1, "kite")[0])
                stats = session.statistics()
            data = emu.stats()
    assert data["requests"]["submit"] == 3
    assert data["tasks_created"] == 0
    assert stats.submit_attempts == 3
    assert stats.submit_retries == 2


@pytest.mark.anyio
async def test_a_rate_limited_submit_that_gets_through_makes_one_task() -> None:
    time = AutoClock()
    with anyio.fail_after(10):
        async with Emulator(Scenario(api_keys=(KEY,))) as emu:
            emu.fail_next("submit", "status", status=429, retry_after=0, count=6)
            async with _session(
                emu, "apimart", retry_policy=RetryPolicy(max_attempts=2, budget_floor=0.0),
                clock=time.clock, sleep=time.sleep,
            ) as session:
                job = await session.submit(_requests(1, "kite")[0])
                assert job.task_id
            data = emu.stats()
    assert data["requests"]["submit"] == 7
    assert data["tasks_created"] == 1


@pytest.mark.anyio
async def test_failing_polls_give_up_after_max_poll_errors_with_the_task_id() -> None:
    policy = PollPolicy(
        first_poll=0.01, min_interval=0.005, quantum=0.005, max_interval=0.01, max_poll_errors=3
    )
    scenario = Scenario(api_keys=(KEY,), poll_faults=FaultRates(server_error=1.0))
    with anyio.fail_after(10):
        async with Emulator(scenario) as emu:
            async with _session(emu, "apimart", poll_policy=policy) as session:
                outcomes = await _run(session, _requests(5, "dune"))
            data = emu.stats()
    assert len(outcomes) == 5
    for outcome in outcomes:
        assert isinstance(outcome.error, ServerError)
        assert outcome.task_id is not None  # the paid task can still be resumed
    assert all(task["polls"] == 3 for task in data["tasks"])


# -- a total deadline --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_submit_retries_stop_at_the_policy_deadline() -> None:
    policy = RetryPolicy(
        max_attempts=100_000, base_delay=0.01, max_delay=0.01, deadline=0.2, budget_floor=1e6
    )
    async with Emulator(Scenario(api_keys=(KEY,))) as emu:
        emu.fail_next("submit", "status", status=429, retry_after=0, count=100_000)
        async with _session(emu, "apimart", retry_policy=policy) as session:
            # Generous against a busy machine, and far below what 100,000 attempts would take.
            with anyio.fail_after(1.5), pytest.raises(RateLimitError):
                await session.submit(_requests(1, "kite")[0])
            assert session.statistics().submit_attempts < 100_000


# -- Retry-After honoured, up to a cap ---------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["seconds", "http_date"])
@pytest.mark.parametrize(("hint", "cap"), [(7, 30.0), (7, 3.0), (1e9, 30.0)])
async def test_submit_waits_what_retry_after_says_up_to_the_cap(
    fmt: str, hint: float, cap: float
) -> None:
    sleep = RecordingSleep()
    policy = RetryPolicy(max_attempts=3, base_delay=0.25, max_delay=0.5, max_retry_after=cap)
    scenario = Scenario(api_keys=(KEY,), retry_after_format=fmt)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        async with Emulator(scenario) as emu:
            emu.fail_next("submit", "status", status=429, retry_after=hint)
            async with _session(
                emu, "toapis", retry_policy=policy, sleep=sleep,
                poll_policy=PollPolicy(first_poll=3600),
            ) as session:
                job = await session.submit(_requests(1, "kite")[0])
                assert job.task_id
            data = emu.stats()
    assert data["requests"]["submit"] == 2
    assert len(sleep.waits) == 1
    (waited,) = sleep.waits
    expected = min(hint, cap)
    if fmt == "seconds":
        assert waited == expected
    else:
        # An HTTP date has a one-second resolution and is read against the wall clock.
        assert expected - 1.5 <= waited <= expected


@pytest.mark.anyio
async def test_absurd_retry_after_on_polls_is_capped_by_the_pause_cap() -> None:
    policy = PollPolicy(
        first_poll=0.01, min_interval=0.005, quantum=0.005, max_interval=0.05,
        rate_limit_pause_cap=0.05,
    )
    with anyio.fail_after(10):
        async with Emulator(Scenario(api_keys=(KEY,))) as emu:
            emu.fail_next("poll", "status", status=429, retry_after=1e9, count=3)
            async with _session(emu, "bfl", poll_policy=policy) as session:
                started = anyio.current_time()
                result = await session.generate(model="flux-kontext-pro", prompt="kite")
                elapsed = anyio.current_time() - started
                assert session.statistics().rate_limited == 3
    assert result.images
    assert elapsed < 5.0  # three capped pauses, not 3e9 seconds


# -- a retry budget, not a storm ---------------------------------------------------------------

JOBS = 40


@pytest.mark.anyio
async def test_total_rate_limiting_slows_the_session_instead_of_storming() -> None:
    # Every submit answered 429 with "Retry-After: 0": without the session's pacing, 40
    # submitters retrying every 1-2 ms would send thousands of POSTs. With it, the submit rate
    # is halved at each round of 429s (the waits run on a clock that moves only when the
    # session sleeps), and each job fails only at its deadline.
    policy = RetryPolicy(max_attempts=5, base_delay=0.001, max_delay=0.002)
    time = AutoClock()
    with anyio.fail_after(15):
        async with Emulator(Scenario(api_keys=(KEY,))) as emu:
            emu.fail_next("submit", "status", status=429, retry_after=0, count=100_000)
            async with _session(
                emu, "apimart", retry_policy=policy,
                limits=Limits(job_timeout=1.0, max_concurrent_submits=JOBS),
                clock=time.clock, sleep=time.sleep,
            ) as session:
                outcomes = await _run(session, _requests(JOBS, "storm"))
                stats = session.statistics()
            data = emu.stats()
    assert len(outcomes) == JOBS
    assert all(isinstance(o.error, RateLimitError) for o in outcomes)
    posts = data["requests"]["submit"]
    assert JOBS <= posts <= 2 * JOBS
    assert stats.rate_limited == posts
    assert data["tasks_created"] == 0
    # Paced: the later submits waited for their turn (the waits grow as the rate is cut).
    waits = [w for w in time.waits if w <= time.forever]
    assert max(waits) > 100 * min(waits)


@pytest.mark.anyio
async def test_total_5xx_outage_on_toapis_submits_stays_within_the_retry_budget() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=0.001, max_delay=0.002)
    scenario = Scenario(api_keys=(KEY,), submit_faults=FaultRates(server_error=1.0))
    with anyio.fail_after(15):
        async with Emulator(scenario) as emu:
            # The outage breaker is off: this is about the retry budget alone.
            async with _session(
                emu, "toapis", retry_policy=policy, limits=Limits(outage_streak=0)
            ) as session:
                outcomes = await _run(session, _requests(JOBS, "storm"))
            data = emu.stats()
    assert len(outcomes) == JOBS
    assert all(isinstance(o.error, (ServerError, SubmissionUncertainError)) for o in outcomes)
    assert data["tasks_created"] == 0
    posts = data["requests"]["submit"]
    retries = posts - JOBS
    assert retries <= policy.budget_floor + policy.budget_ratio * JOBS, posts


@pytest.mark.anyio
async def test_total_5xx_outage_on_polls_stays_within_the_retry_budget() -> None:
    policy = RetryPolicy()
    poll = PollPolicy(first_poll=0.01, min_interval=0.005, quantum=0.005, max_interval=0.01)
    scenario = Scenario(api_keys=(KEY,), poll_faults=FaultRates(server_error=1.0))
    with anyio.fail_after(15):
        async with Emulator(scenario) as emu:
            async with _session(emu, "apimart", retry_policy=policy, poll_policy=poll) as session:
                outcomes = await _run(session, _requests(JOBS, "storm"))
            data = emu.stats()
    assert len(outcomes) == JOBS
    assert all(o.task_id is not None for o in outcomes)
    polls = data["requests"]["poll"]
    # The budget is session-wide: first attempts are the JOBS submits and the JOBS first polls.
    first_attempts = data["requests"]["submit"] + JOBS
    assert polls - JOBS <= policy.budget_floor + policy.budget_ratio * first_attempts, polls
