"""The pure retry policy: backoff bounds, Retry-After, the submit decision table, the budget."""

from __future__ import annotations

import email.utils
import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux_async.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    InsufficientCreditsError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    ServerError,
    SubmissionUncertainError,
    TransportError,
    TransportTimeout,
    ValidationError,
    api_error_for_status,
)
from flux_async.retry import (
    RetryBudget,
    RetryPolicy,
    SubmitDecision,
    backoff_bounds,
    backoff_delay,
    classify_submit_failure,
    is_retryable_poll,
    parse_retry_after,
    retry_delay,
    should_retry,
)

NOW = datetime(2026, 5, 4, 12, 0, 0, tzinfo=UTC)

policies = st.builds(
    lambda base, extra, multiplier, jitter, attempts: RetryPolicy(
        base_delay=base,
        max_delay=base + extra,
        multiplier=multiplier,
        jitter=jitter,
        max_attempts=attempts,
    ),
    base=st.floats(0.001, 100),
    extra=st.floats(0, 1000),
    multiplier=st.floats(1, 10),
    jitter=st.sampled_from(["full", "equal", "none"]),
    attempts=st.integers(1, 20),
)


# -- policy -----------------------------------------------------------------------------------


def test_default_policy() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_delay, policy.max_delay, policy.multiplier) == (
        5,
        0.5,
        30.0,
        2.0,
    )
    assert (policy.jitter, policy.max_retry_after, policy.deadline) == ("equal", 120.0, 300.0)
    assert (policy.budget_ratio, policy.budget_floor) == (0.2, 10.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": True},
        {"base_delay": 0},
        {"base_delay": math.inf},
        {"max_delay": 0.1},
        {"multiplier": 0.5},
        {"jitter": "half"},
        {"max_retry_after": -1},
        {"deadline": 0},
        {"deadline": math.nan},
        {"budget_ratio": -0.1},
    ],
)
def test_policy_refuses_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match=r"^RetryPolicy\.\w+"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        RetryPolicy().max_attempts = 9  # type: ignore[misc]


# -- backoff ----------------------------------------------------------------------------------


def test_default_backoff_bounds() -> None:
    policy = RetryPolicy()
    assert [backoff_bounds(policy, n) for n in range(8)] == [
        (0.25, 0.5),
        (0.5, 1.0),
        (1.0, 2.0),
        (2.0, 4.0),
        (4.0, 8.0),
        (8.0, 16.0),
        (15.0, 30.0),
        (15.0, 30.0),
    ]
    full = RetryPolicy(jitter="full")
    assert backoff_bounds(full, 3) == (0.0, 4.0)
    assert backoff_bounds(RetryPolicy(jitter="none"), 3) == (4.0, 4.0)


@given(policy=policies, attempt=st.integers(0, 5000), seed=st.integers())
def test_backoff_delay_stays_within_its_stated_bounds(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    low, high = backoff_bounds(policy, attempt)
    # cap = min(max_delay, base * multiplier ** attempt), computed in log space so the test's
    # own arithmetic cannot overflow.
    log_raw = math.log(policy.base_delay) + attempt * math.log(policy.multiplier)
    cap = policy.max_delay if log_raw >= math.log(policy.max_delay) else math.exp(log_raw)
    assert high == pytest.approx(cap)
    assert 0 <= low <= high <= policy.max_delay
    assert low == {"full": 0.0, "equal": high / 2, "none": high}[policy.jitter]
    delay = backoff_delay(policy, attempt, random.Random(seed))
    assert low <= delay <= high
    if attempt > 0:
        assert backoff_bounds(policy, attempt - 1)[1] <= high


def test_jitter_spreads_delays_across_the_interval() -> None:
    policy = RetryPolicy(jitter="full", base_delay=1, max_delay=1)
    rng = random.Random(7)
    delays = [backoff_delay(policy, 0, rng) for _ in range(1000)]
    assert min(delays) < 0.05
    assert max(delays) > 0.95


def test_negative_attempt_is_a_bug() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(RetryPolicy(), -1, random.Random(0))


@given(
    policy=policies,
    attempt=st.integers(0, 50),
    retry_after=st.none() | st.floats(allow_nan=True, allow_infinity=True),
)
def test_retry_delay_honours_retry_after_up_to_the_cap(
    policy: RetryPolicy, attempt: int, retry_after: float | None
) -> None:
    delay = retry_delay(policy, attempt, random.Random(0), retry_after=retry_after)
    if retry_after is None or math.isnan(retry_after) or retry_after <= 0:
        # No hint, or one of 0, negative or garbage: the backoff, never an immediate retry.
        low, high = backoff_bounds(policy, attempt)
        assert low <= delay <= high
    else:
        assert delay == min(retry_after, policy.max_retry_after)
    assert 0 <= delay <= max(policy.max_delay, policy.max_retry_after)


def test_should_retry_respects_attempts_and_deadline() -> None:
    policy = RetryPolicy(max_attempts=3, deadline=10)
    assert should_retry(policy, attempts=1, elapsed=0, delay=1)
    assert should_retry(policy, attempts=2, elapsed=8, delay=2)
    assert not should_retry(policy, attempts=3, elapsed=0, delay=0)
    assert not should_retry(policy, attempts=1, elapsed=9, delay=2)
    assert should_retry(RetryPolicy(deadline=None), attempts=1, elapsed=1e9, delay=1e9)


# -- Retry-After ------------------------------------------------------------------------------


def http_date(when: datetime) -> str:
    return email.utils.format_datetime(when, usegmt=True)


@given(seconds=st.integers(0, 10**12))
def test_retry_after_integer_seconds(seconds: int) -> None:
    assert parse_retry_after(str(seconds), now=None) == float(seconds)
    assert parse_retry_after(f"  {seconds}\t", now=NOW) == float(seconds)


@given(seconds=st.floats(0, 1e6))
def test_retry_after_fractional_seconds(seconds: float) -> None:
    assert parse_retry_after(f"{seconds:.3f}", now=None) == pytest.approx(round(seconds, 3))


@given(seconds=st.integers(1, 10**9))
def test_negative_retry_after_is_zero(seconds: int) -> None:
    assert parse_retry_after(f"-{seconds}", now=None) == 0.0


@given(offset=st.integers(-(10**8), 10**8))
def test_retry_after_http_date_is_relative_to_now(offset: int) -> None:
    value = http_date(NOW + timedelta(seconds=offset))
    assert parse_retry_after(value, now=NOW) == max(0.0, float(offset))


def test_retry_after_http_date_examples() -> None:
    assert parse_retry_after("Mon, 04 May 2026 12:02:00 GMT", now=NOW) == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=NOW) == 0.0  # in the past
    assert parse_retry_after("Mon, 04 May 2026 12:02:00 GMT", now=None) is None  # cannot tell
    naive_now = NOW.replace(tzinfo=None)
    assert parse_retry_after("Mon, 04 May 2026 12:00:30 GMT", now=naive_now) == 30.0
    assert parse_retry_after("Mon, 04 May 2026 14:00:30 +0200", now=NOW) == 30.0


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "soon",
        "1e3",
        "inf",
        "NaN",
        "0x10",
        "1,5",
        "12 seconds",
        "Mon, 99 Foo 2026",
        "--5",
        "١٢",
    ],
)
def test_garbage_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_huge_retry_after_is_returned_as_given_and_capped_by_retry_delay() -> None:
    huge = parse_retry_after("99999999999", now=None)
    assert huge == 99999999999.0
    absurd = parse_retry_after("9" * 400, now=None)
    assert absurd == math.inf
    policy = RetryPolicy()
    for value in (huge, absurd):
        assert retry_delay(policy, 0, random.Random(0), retry_after=value) == policy.max_retry_after


@given(value=st.text(max_size=60), now=st.none() | st.datetimes(timezones=st.none() | st.just(UTC)))
def test_retry_after_never_raises(value: str, now: datetime | None) -> None:
    result = parse_retry_after(value, now=now)
    assert result is None or result >= 0


# -- the submit decision table ----------------------------------------------------------------

DECISIONS = [
    (TransportError("connect refused", request_sent=False), SubmitDecision.RETRY),
    (TransportTimeout("connect timeout", request_sent=False), SubmitDecision.RETRY),
    (RateLimitError("slow down"), SubmitDecision.RETRY),
    (RateLimitError("slow down", retry_after=3.0, provider="bfl"), SubmitDecision.RETRY),
    (TransportError("reset after send", request_sent=True), SubmitDecision.AMBIGUOUS),
    (TransportTimeout("read timeout", request_sent=True), SubmitDecision.AMBIGUOUS),
    (ServerError("boom", status=500), SubmitDecision.AMBIGUOUS),
    (
        ServerError("build_request_failed: bad size", status=500, provider="apimart"),
        SubmitDecision.AMBIGUOUS,
    ),
    (ServerError("unavailable", status=503), SubmitDecision.AMBIGUOUS),
    (ProtocolError("garbled 2xx", body="{"), SubmitDecision.AMBIGUOUS),
    (APIError("timeout", status=408), SubmitDecision.AMBIGUOUS),
    (APIError("redirect", status=302), SubmitDecision.AMBIGUOUS),
    (BadRequestError("bad", status=400), SubmitDecision.RAISE),
    (BadRequestError("policy", status=422), SubmitDecision.RAISE),
    (BadRequestError("too large", status=413), SubmitDecision.RAISE),
    (AuthenticationError("key", status=401), SubmitDecision.RAISE),
    (AuthenticationError("access", status=403), SubmitDecision.RAISE),
    (InsufficientCreditsError("credits", status=402), SubmitDecision.RAISE),
    (NotFoundError("path", status=404), SubmitDecision.RAISE),
    (APIError("conflict", status=409), SubmitDecision.RAISE),
    (ValidationError("size", "5:4", "1:1"), SubmitDecision.RAISE),
    (ConfigurationError("no key"), SubmitDecision.RAISE),
    (SubmissionUncertainError("?", provider="toapis"), SubmitDecision.RAISE),
    (ValueError("a bug"), SubmitDecision.RAISE),
    (KeyboardInterrupt(), SubmitDecision.RAISE),
]


@pytest.mark.parametrize(
    ("exc", "decision"),
    DECISIONS,
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.name,
)
def test_classify_submit_failure(exc: BaseException, decision: SubmitDecision) -> None:
    assert classify_submit_failure(exc) is decision


@given(status=st.integers(100, 599))
def test_every_http_status_has_a_safe_submit_decision(status: int) -> None:
    error = api_error_for_status(status)("x", status=status)
    decision = classify_submit_failure(error)
    if status == 429:
        assert decision is SubmitDecision.RETRY
    elif 400 <= status < 500 and status != 408:
        assert decision is SubmitDecision.RAISE
    else:
        assert decision is SubmitDecision.AMBIGUOUS
    # Only a 429 may be retried: nothing else that reached the provider is sent again blindly.
    assert (decision is SubmitDecision.RETRY) == (status == 429)


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (TransportError("x", request_sent=True), True),
        (TransportError("x", request_sent=False), True),
        (TransportTimeout("x", request_sent=True), True),
        (RateLimitError("x"), True),
        (ServerError("x", status=502), True),
        (ProtocolError("x"), True),
        (BadRequestError("x", status=400), False),
        (AuthenticationError("x", status=401), False),
        (InsufficientCreditsError("x", status=402), False),
        (NotFoundError("x", status=404), False),
        (APIError("x", status=409), False),
        (ValidationError("f", 1, "2"), False),
        (ValueError("bug"), False),
    ],
)
def test_is_retryable_poll(exc: BaseException, retryable: bool) -> None:
    assert is_retryable_poll(exc) is retryable


# -- the retry budget -------------------------------------------------------------------------


def test_budget_under_total_failure_allows_the_floor_plus_a_fifth() -> None:
    budget = RetryBudget(RetryPolicy())
    granted = 0
    for _ in range(1000):
        budget.record_request()
        while budget.try_spend_retry():  # every attempt fails: retry for as long as allowed
            granted += 1
    assert granted <= 10 + 0.2 * 1000
    assert granted >= 0.2 * 1000  # the budget is not stingier than promised either
    stats = budget.statistics()
    assert (stats.requests, stats.retries, stats.refused) == (1000, granted, 1000)


@given(
    ratio=st.floats(0, 1),
    floor=st.floats(0, 50),
    refill=st.floats(0, 5),
    events=st.lists(st.tuples(st.booleans(), st.floats(-5, 30)), max_size=300),
)
def test_budget_bound(
    ratio: float, floor: float, refill: float, events: list[tuple[bool, float]]
) -> None:
    budget = RetryBudget(
        RetryPolicy(budget_ratio=ratio, budget_floor=floor), refill_per_second=refill
    )
    now = earliest = latest = 1000.0
    requests = granted = 0
    for is_request, step in events:
        now += step  # the clock may also step back: that must not refill anything
        earliest = min(earliest, now)
        latest = max(latest, now)
        if is_request:
            budget.record_request(now=now)
            requests += 1
        elif budget.try_spend_retry(now=now):
            granted += 1
    assert granted <= floor + ratio * requests + refill * (latest - earliest) + 1e-6
    assert 0 <= budget.statistics().tokens <= max(100.0, floor)


class _EagerBudget:
    """The budget's rules with every request's tokens deposited at once (as it was written
    before deposits were made lazily): the reference the lazy one must match exactly."""

    def __init__(self, ratio: float, floor: float, capacity: float, refill: float) -> None:
        self.ratio, self.floor, self.capacity, self.refill = ratio, floor, max(capacity, floor), refill
        self.tokens, self.last = floor, None

    def advance(self, now: float | None) -> None:
        if now is None:
            return
        if self.last is not None and now > self.last and self.tokens < self.floor:
            self.tokens = min(self.floor, self.tokens + self.refill * (now - self.last))
        if self.last is None or now > self.last:
            self.last = now

    def record(self, now: float | None) -> None:
        if now is not None:
            self.advance(now)
        tokens = self.tokens + self.ratio
        self.tokens = tokens if tokens < self.capacity else self.capacity

    def spend(self, now: float | None) -> bool:
        self.advance(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 1 / 3, 0.7, 1.0]),
    floor=st.floats(0, 20),
    capacity=st.sampled_from([0.5, 3.0, 100.0]),
    refill=st.floats(0, 5),
    events=st.lists(
        st.tuples(st.booleans(), st.one_of(st.none(), st.floats(-5, 30))), max_size=300
    ),
)
def test_budget_deposits_lazily_to_the_last_bit_of_the_eager_sums(
    ratio: float,
    floor: float,
    capacity: float,
    refill: float,
    events: list[tuple[bool, float | None]],
) -> None:
    # Requests are only counted on their path; their tokens are deposited when the bucket is
    # next looked at. Every decision, and the tokens to the last bit, are those of depositing
    # each request's share when it came.
    lazy = RetryBudget(
        RetryPolicy(budget_ratio=ratio, budget_floor=floor), capacity=capacity, refill_per_second=refill
    )
    eager = _EagerBudget(ratio, floor, capacity, refill)
    now = 1000.0
    for is_request, step in events:
        at = None if step is None else (now := now + step)
        if is_request:
            lazy.record_request(now=at)
            eager.record(at)
        else:
            assert lazy.try_spend_retry(now=at) is eager.spend(at)
    assert lazy.statistics().tokens == eager.tokens


def test_budget_refills_the_floor_over_time_only() -> None:
    budget = RetryBudget(RetryPolicy(budget_ratio=0.0, budget_floor=2.0), refill_per_second=0.5)
    assert budget.try_spend_retry(now=0.0)
    assert budget.try_spend_retry(now=0.0)
    assert not budget.try_spend_retry(now=1.0)  # 0.5 token back: not yet a whole retry
    assert budget.try_spend_retry(now=2.0)
    assert not budget.try_spend_retry()  # no time given: no refill
    assert budget.statistics().tokens <= 2.0
    assert not budget.try_spend_retry(now=1.5)  # the clock stepped back


def test_budget_caps_what_good_times_bank() -> None:
    budget = RetryBudget(RetryPolicy(), capacity=50)
    for _ in range(100_000):
        budget.record_request()
    assert budget.statistics().tokens == 50
    assert "tokens=50.00" in repr(budget)
