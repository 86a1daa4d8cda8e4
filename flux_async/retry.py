"""Retry policy: jittered exponential backoff, ``Retry-After``, a retry budget, and which
failures may be retried for a submit (paid, not idempotent) and for a poll (idempotent).

Pure: no I/O, no clock reads, no aiohttp or anyio. Randomness comes from a ``random.Random``
the caller passes in, and time (``now``, ``elapsed``) is an argument, so every decision here is
a plain function of its inputs and can be tested without waiting.

``attempt`` counts retries already made: the delay before the first retry is
``backoff_delay(policy, 0, rng)``, before the second ``backoff_delay(policy, 1, rng)``, and so on.
"""

from __future__ import annotations

import enum
import math
import random
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

import attrs

from ._checks import check_int, check_number, check_seconds
from .errors import (
    APIError,
    ConfigurationError,
    ProtocolError,
    RateLimitError,
    ServerError,
    TransportError,
)

__all__ = [
    "RetryBudget",
    "RetryBudgetStatistics",
    "RetryPolicy",
    "SubmitDecision",
    "backoff_bounds",
    "backoff_delay",
    "classify_submit_failure",
    "is_retryable_poll",
    "parse_retry_after",
    "retry_delay",
    "should_retry",
]


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How one operation (a poll, a download, a submit where retrying is safe) is retried.

    - ``max_attempts``: attempts in all, the first one included.
    - ``base_delay``, ``multiplier``, ``max_delay``: the backoff ceiling before retry number
      ``attempt`` (0 for the first) is ``cap = min(max_delay, base_delay * multiplier ** attempt)``
      seconds.
    - ``jitter``: how a delay is drawn below that ceiling (see :func:`backoff_bounds`):
      ``"full"`` draws ``uniform(0, cap)``, ``"equal"`` draws ``cap / 2 + uniform(0, cap / 2)``
      (always waits at least half), ``"none"`` waits exactly ``cap``. The default is equal
      jitter: it spreads clients out while keeping a floor, so a retry never fires immediately
      against a server that has just failed.
    - ``max_retry_after``: a provider's ``Retry-After`` is honoured up to this many seconds.
    - ``deadline``: the total time, in seconds, one operation may spend retrying (None: no limit).
    - ``budget_ratio`` and ``budget_floor``: the session-wide :class:`RetryBudget`: retries may
      be at most ``budget_ratio`` of first attempts, plus ``budget_floor`` in reserve.

    A field out of its range (a bool where a number goes, a delay of 0, ``max_delay`` below
    ``base_delay``, NaN or infinity) is a ConfigurationError naming ``RetryPolicy.<field>``.
    """

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: Literal["full", "equal", "none"] = "equal"
    max_retry_after: float = 120.0
    deadline: float | None = 300.0
    budget_ratio: float = 0.2
    budget_floor: float = 10.0

    def __attrs_post_init__(self) -> None:
        check_int(_OWNER, "max_attempts", self.max_attempts, 1)
        check_seconds(_OWNER, "base_delay", self.base_delay)
        check_seconds(_OWNER, "max_delay", self.max_delay)
        if self.max_delay < self.base_delay:
            raise ConfigurationError(
                f"RetryPolicy.max_delay ({self.max_delay!r}) must be at least base_delay ({self.base_delay!r})"
            )
        check_number(_OWNER, "multiplier", self.multiplier, least=1)
        if self.jitter not in ("full", "equal", "none"):
            raise ConfigurationError(f"RetryPolicy.jitter must be 'full', 'equal' or 'none', got {self.jitter!r}")
        check_number(_OWNER, "max_retry_after", self.max_retry_after)
        if self.deadline is not None:
            check_seconds(_OWNER, "deadline", self.deadline)
        check_number(_OWNER, "budget_ratio", self.budget_ratio)
        check_number(_OWNER, "budget_floor", self.budget_floor)


_OWNER = "RetryPolicy"


def backoff_bounds(policy: RetryPolicy, attempt: int) -> tuple[float, float]:
    """The interval ``[low, high]`` that :func:`backoff_delay` draws from before retry number
    ``attempt`` (0 for the first retry).

    With ``cap = min(max_delay, base_delay * multiplier ** attempt)``: full jitter gives
    ``[0, cap]``, equal jitter ``[cap / 2, cap]``, no jitter ``[cap, cap]``. So every delay is at
    most ``max_delay``, and ``high`` never decreases from one attempt to the next.
    """
    if attempt < 0:
        raise ValueError(f"attempt counts retries already made (from 0), got {attempt!r}")
    try:
        raw = policy.base_delay * policy.multiplier**attempt
    except OverflowError:
        raw = math.inf
    cap = min(policy.max_delay, raw)
    if policy.jitter == "full":
        return 0.0, cap
    if policy.jitter == "equal":
        return cap / 2, cap
    return cap, cap


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt`` (0 = the first retry), drawn with ``rng``.

    Always within :func:`backoff_bounds` ``(policy, attempt)``: ``0 <= low <= delay <= high <=
    policy.max_delay``.
    """
    low, high = backoff_bounds(policy, attempt)
    if low == high:
        return high
    # uniform() may round just past an end; the stated bounds are a promise.
    return min(high, max(low, rng.uniform(low, high)))


def retry_delay(
    policy: RetryPolicy, attempt: int, rng: random.Random, *, retry_after: float | None
) -> float:
    """Seconds to wait before retry number ``attempt``: the provider's ``retry_after`` when it
    gave a positive one (at most ``policy.max_retry_after``), otherwise :func:`backoff_delay`
    (a ``Retry-After`` of 0, a negative one or garbage must not make a client retry at once)."""
    if retry_after is not None and retry_after > 0.0:  # False for NaN too
        return min(retry_after, policy.max_retry_after)
    return backoff_delay(policy, attempt, rng)


def should_retry(policy: RetryPolicy, *, attempts: int, elapsed: float, delay: float) -> bool:
    """True when, after ``attempts`` attempts (the first one included) and ``elapsed`` seconds
    since the first began, waiting ``delay`` more seconds and trying once more stays within
    ``max_attempts`` and the ``deadline``."""
    if attempts >= policy.max_attempts:
        return False
    return policy.deadline is None or elapsed + delay <= policy.deadline


_SECONDS = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def parse_retry_after(value: str | None, *, now: datetime | None) -> float | None:
    """A ``Retry-After`` header value in seconds, or None when absent or unreadable.

    Accepts a number of seconds (``"120"``, ``"1.5"``; a negative number gives 0) or an HTTP
    date, which needs ``now`` (the response's arrival time) to be turned into seconds; a date in
    the past gives 0. A naive ``now`` or date is taken as UTC. An absurdly large value is
    returned as given (possibly ``inf``): :func:`retry_delay` applies the policy's cap.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _SECONDS.fullmatch(text):
        return max(0.0, float(text))
    if now is None:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class SubmitDecision(enum.Enum):
    """What to do after a submit (a paid POST) failed."""

    #: No task can exist: send the submit again (after a delay).
    RETRY = "retry"
    #: The provider refused the request and will refuse it again: end the job with this error.
    RAISE = "raise"
    #: A task may exist: never resubmit blindly; look it up where the provider allows it,
    #: otherwise surface SubmissionUncertainError.
    AMBIGUOUS = "ambiguous"


def classify_submit_failure(exc: BaseException) -> SubmitDecision:
    """The :class:`SubmitDecision` for a failed submit.

    ========================================================  ==========
    TransportError (timeouts included) with request_sent=False  RETRY (nothing reached the server)
    RateLimitError (429)                                        RETRY (refused before any task)
    ServerError with ``refused`` (see below)                    RETRY (refused before any task)
    TransportError with request_sent=True                       AMBIGUOUS
    other ServerError (5xx; apimart's ``build_request_failed``)  AMBIGUOUS
    ProtocolError (an unreadable 2xx submit body)               AMBIGUOUS
    APIError 408 or outside 4xx (e.g. an unexpected 3xx)        AMBIGUOUS
    any other APIError 4xx (400/401/402/403/404/413/422...)     RAISE
    anything else (validation, configuration, a bug)            RAISE (propagated, never retried)
    ========================================================  ==========

    A 5xx is ``refused`` only where the provider's own JSON error answer proves that no task
    was made, decided per provider (each codec's ``refused_server_statuses``): BFL documents
    500 and 503 on submit as errors to retry with backoff; apimart's 503 is its API turning the
    request away, while its 500 is not trusted (parameter errors reportedly come back as 500);
    toapis needs no such rule, because an ambiguous submit is looked up by its id. A gateway's
    5xx (an HTML page, an empty body) proves nothing anywhere.
    """
    if isinstance(exc, TransportError):
        return SubmitDecision.AMBIGUOUS if exc.request_sent else SubmitDecision.RETRY
    if isinstance(exc, RateLimitError):
        return SubmitDecision.RETRY
    if isinstance(exc, ServerError) and exc.refused:
        return SubmitDecision.RETRY
    if isinstance(exc, (ServerError, ProtocolError)):
        return SubmitDecision.AMBIGUOUS
    if isinstance(exc, APIError):
        if 400 <= exc.status < 500 and exc.status != 408:
            return SubmitDecision.RAISE
        return SubmitDecision.AMBIGUOUS
    return SubmitDecision.RAISE


def is_retryable_poll(exc: BaseException) -> bool:
    """True when a failed poll (an idempotent GET) may simply be tried again: any
    TransportError, a 429, a 5xx, or a garbled 2xx body (ProtocolError; often transient)."""
    return isinstance(exc, (TransportError, RateLimitError, ServerError, ProtocolError))


@attrs.frozen(kw_only=True)
class RetryBudgetStatistics:
    """A snapshot of a :class:`RetryBudget`."""

    tokens: float
    requests: int
    retries: int
    refused: int


class RetryBudget:
    """A session-wide cap on retries, so that when everything fails, retries stay a bounded
    fraction of requests instead of multiplying the load (a token bucket, after Finagle's).

    Call :meth:`record_request` for every first attempt (not for retries) and
    :meth:`try_spend_retry` before every retry; a False answer means "do not retry, give up".
    Each request deposits ``ratio`` tokens (up to ``capacity``), each retry spends one, and the
    bucket starts with ``floor`` tokens. While below ``floor`` it also refills by
    ``refill_per_second`` so a quiet client is never starved for good. Hence, between two
    times ``t0 <= t1``, retries granted <= ``floor + ratio * requests + refill_per_second *
    (t1 - t0)``. (A caller that also records its retries as requests still gets a bound, a
    looser one: ``(floor + ratio * first_attempts) / (1 - ratio)`` plus the refill.)

    ``ratio`` and ``floor`` come from the :class:`RetryPolicy` (``budget_ratio``,
    ``budget_floor``). Pure: the caller passes the time as ``now`` (any monotonic clock, in
    seconds); calls without ``now``, or a clock that steps back, refill nothing by time. Not
    thread-safe; a session uses it from its one event loop.
    """

    __slots__ = (
        "_capacity",
        "_floor",
        "_folded",
        "_last",
        "_ratio",
        "_refill",
        "_refused",
        "_requests",
        "_retries",
        "_tokens",
    )

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        capacity: float = 100.0,
        refill_per_second: float = 0.1,
    ) -> None:
        policy = policy or RetryPolicy()
        for name, value in (("capacity", capacity), ("refill_per_second", refill_per_second)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self._ratio = float(policy.budget_ratio)
        self._floor = float(policy.budget_floor)
        self._capacity = max(float(capacity), self._floor)
        self._refill = float(refill_per_second)
        self._tokens = self._floor
        self._last: float | None = None
        self._requests = 0
        self._folded = 0  # requests whose tokens are in _tokens (the rest are added lazily)
        self._retries = 0
        self._refused = 0

    def _fold(self) -> None:
        """Deposit the tokens of the requests recorded since the last look, one request at a
        time as if each had been deposited when recorded (the same sums, rounding and all;
        at most ``capacity / ratio`` steps)."""
        pending = self._requests - self._folded
        if not pending:
            return
        self._folded = self._requests
        tokens, ratio, capacity = self._tokens, self._ratio, self._capacity
        while pending and tokens < capacity:
            tokens += ratio
            if tokens > capacity:
                tokens = capacity
            pending -= 1
        self._tokens = tokens

    def _advance(self, now: float | None) -> None:
        self._fold()
        if now is None:
            return
        if self._last is not None and now > self._last and self._tokens < self._floor:
            self._tokens = min(self._floor, self._tokens + self._refill * (now - self._last))
        if self._last is None or now > self._last:
            self._last = now

    def record_request(self, *, now: float | None = None) -> None:
        """Count one first attempt (it earns ``ratio`` of a retry, deposited when the bucket
        is next looked at: a count per request, on every request's path)."""
        if now is not None:
            self._advance(now)
        self._requests += 1

    def try_spend_retry(self, *, now: float | None = None) -> bool:
        """Take one retry from the budget; False (and nothing spent) when it is exhausted."""
        self._advance(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._retries += 1
            return True
        self._refused += 1
        return False

    def statistics(self) -> RetryBudgetStatistics:
        """Tokens left, requests recorded, retries granted and refused."""
        self._fold()
        return RetryBudgetStatistics(
            tokens=self._tokens,
            requests=self._requests,
            retries=self._retries,
            refused=self._refused,
        )

    def __repr__(self) -> str:
        self._fold()
        return (
            f"RetryBudget(ratio={self._ratio}, floor={self._floor}, capacity={self._capacity}, "
            f"tokens={self._tokens:.2f})"
        )
