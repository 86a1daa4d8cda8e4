"""The shared poll scheduler: one driver task watches every outstanding task of a session.

A waiting task is one small slotted record in a min-heap (one heap per provider) keyed by its
next due time; it owns no coroutine, no asyncio task and no timer handle. The driver sleeps until
the earliest due time (due times are rounded up to a quantum, so one wake-up serves a batch),
then hands the due polls to worker tasks in its own task group, at most ``max_in_flight`` polls
at once. Workers are started only when every one is busy, so there are never more than
``max_in_flight`` of them, and they end with the scheduler (handing a poll to a parked worker
costs a sixth of spawning a task for it).

*When* to poll next is decided per task from, in order: the progress the provider reports (a
linear extrapolation that allows for integer-percent rounding and for a queue before the
progress starts), ``estimated_time``, the completion-time distribution learned online for the
task's provider and model, and otherwise a capped geometric backoff. :class:`PollPolicy` holds
the trade-off between requests and detection delay.

Time is injected (``clock``, ``sleep``) so the scheduler runs in virtual time under test. This
module must not import aiohttp, the transport, the session or the provider codecs: it only sees
``poll(ref) -> TaskState`` and the error tree.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import heapq
import itertools
import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import attrs

from ._parking import Parking
from .errors import RateLimitError, TaskTimeoutError
from .models import TaskRef, TaskState, TaskStatus
from .retry import (
    RetryBudget,
    RetryPolicy,
    _non_negative,
    _positive,
    backoff_delay,
    is_retryable_poll,
)

__all__ = ["PollPolicy", "PollScheduler", "SchedulerStatistics"]

logger = logging.getLogger(__name__)

#: What ``on_done`` receives: the terminal state, or the exception that ended the watch.
DoneCallback = Callable[[TaskState | BaseException], None]


def _optional_positive(obj: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        _positive(obj, attribute, value)


def _positive_int(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class PollPolicy:
    """When and how often the scheduler polls: the trade-off between requests and detection delay.

    Every poll costs a request; every late poll costs latency. ``target_delay`` is the knob that
    sets the exchange rate, in seconds of detection delay (the time from a task's completion to
    the poll that notices it, request latency not included):

    - When progress (or a trusted ``estimated_time``) pins the completion down to a window, the
      scheduler polls once at the end of the window if it is at most ``target_delay`` wide, and
      otherwise splits it into steps of at most ``target_delay``: a typical delay of
      ``target_delay / 2`` or less, for a few requests per task.
    - When only the learned distribution of durations is known, polls are spaced
      ``2 * target_delay`` apart where completions are most likely (a mean delay of about
      ``target_delay``), further apart where they are unlikely (the spacing follows
      ``1 / sqrt(hazard)``, which minimises requests for a given mean delay), and the first poll
      lands at a low quantile of the distribution.
    - When nothing is known yet: a geometric backoff from ``first_poll`` (1 s when None), growing
      by ``backoff`` up to ``max_interval``.

    Halving ``target_delay`` roughly doubles the polls spent near completion; raising it saves
    requests at the price of noticing later. The other knobs:

    - ``first_poll``: seconds after submission of the first poll; None derives it from hints and
      the learned distribution (1 s when nothing is known).
    - ``min_interval``: never poll one task more often than this.
    - ``max_interval``: cap of the geometric backoff and of the retry delays. A completion
      predicted further away than this is checked on the way (at three quarters of the
      distance), in case the progress is not as linear as it looked.
    - ``backoff``: growth factor of the backoff when nothing is known.
    - ``jitter``: relative jitter (``±jitter``) on backoff and retry delays, so tasks submitted
      together spread out. Polls aimed at a predicted completion are not jittered.
    - ``quantum``: due times are rounded up to a multiple of this, so that one wake-up of the
      driver serves every poll due within it (it adds at most ``quantum`` of delay).
    - ``max_in_flight``: polls running at once.
    - ``max_polls_per_second``: optional budget over any one-second window. It is met by delaying
      due polls, oldest due first, and each task's next interval counts from its delayed poll, so
      every task's intervals stretch; the budget is never exceeded and no task is dropped. While
      the budget holds polls back, the statistics' lag shows by how much.
    - ``max_poll_errors``: consecutive failed polls of one task (transport errors, 5xx,
      unreadable bodies) before the task is given up with the last error. A 429 is not counted:
      it pauses the whole provider instead.
    - ``rate_limit_pause_cap``: the longest pause a 429's ``Retry-After`` (or, without one, a
      doubling backoff) imposes on all polls of that provider.
    """

    target_delay: float = attrs.field(default=0.5, validator=_positive)
    first_poll: float | None = attrs.field(default=None, validator=_optional_positive)
    min_interval: float = attrs.field(default=0.2, validator=_positive)
    max_interval: float = attrs.field(default=10.0, validator=_positive)
    backoff: float = attrs.field(default=1.5, validator=_positive)
    jitter: float = attrs.field(default=0.1, validator=_non_negative)
    quantum: float = attrs.field(default=0.02, validator=_non_negative)
    max_in_flight: int = attrs.field(default=32, validator=_positive_int)
    max_polls_per_second: float | None = attrs.field(default=None, validator=_optional_positive)
    max_poll_errors: int = attrs.field(default=5, validator=_positive_int)
    rate_limit_pause_cap: float = attrs.field(default=60.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.min_interval > self.max_interval:
            raise ValueError(
                f"min_interval ({self.min_interval!r}) must be <= max_interval ({self.max_interval!r})"
            )
        if self.backoff < 1:
            raise ValueError(f"backoff must be >= 1, got {self.backoff!r}")
        if self.jitter >= 1:
            raise ValueError(f"jitter must be < 1, got {self.jitter!r}")


@attrs.frozen(kw_only=True)
class SchedulerStatistics:
    """A snapshot of a :class:`PollScheduler`.

    ``finished`` counts watches that ended with ``on_done`` (a terminal state or an error);
    ``gave_up`` those that ended with an error, ``timed_out`` those among them that hit their
    deadline. ``retries`` counts polls rescheduled after a retryable failure (429s included),
    ``rate_limited`` the 429s seen. ``wakeups`` counts the driver's wake-ups. Lag is the time a
    poll started minus the time it was due (after any provider pause): it includes waiting for
    an in-flight slot or the polls-per-second budget. ``lag_p50`` and ``lag_p99`` come from a
    log-spaced histogram (about 12% resolution).
    """

    outstanding: int
    in_flight: int
    polls_sent: int
    polls_failed: int
    retries: int
    rate_limited: int
    finished: int
    gave_up: int
    timed_out: int
    wakeups: int
    polls_per_finished: float
    lag_p50: float
    lag_p99: float
    max_lag: float


# -- the timing model ---------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # 2·φ(0): makes the spacing equal `dense` at the median
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)

# Reported progress is an integer percent, truncated or rounded depending on the provider: a
# report of p means the true progress lies in [p - 0.5, p + 1).
_P_BELOW = 0.5
_P_ABOVE = 1.0
# The learned distribution is used from this many completions on, with this prior on its spread.
_MIN_SAMPLES = 3
_PRIOR_WEIGHT = 2.0
_PRIOR_SIGMA = 0.5
_MIN_SIGMA = 0.03
# Forgetting: a completion weighs e^-1 after this many seconds.
_MEMORY = 1800.0
# A calibrated estimated_time replaces the learned distribution when it leaves this fraction of
# the durations' spread unexplained, or less.
_BETTER = 0.7
# The first poll, and start of the backoff, when nothing is known.
_FIRST_POLL = 1.0
# Once a task is later than predicted, its next polls are spaced by this fraction of the lateness.
_OVERDUE_FRACTION = 0.25
_EPS = 1e-9


def _spacing(elapsed: float, mu: float, sigma: float, dense: float) -> float:
    """Poll spacing at ``elapsed`` seconds for durations ~ LogNormal(mu, sigma).

    Minimising ``polls + λ·delay`` gives a spacing proportional to ``1 / sqrt(hazard)``; it is
    scaled so that it equals ``dense`` at the median.
    """
    z = (math.log(elapsed) - mu) / sigma
    z = min(8.0, max(-8.0, z))
    mills = 0.5 * math.erfc(z * _INV_SQRT2) * _SQRT_2PI * math.exp(0.5 * z * z)  # Q(z) / φ(z)
    return dense * math.sqrt(_SQRT_2_OVER_PI * math.exp(sigma * z) * mills)


def _belief_step(elapsed: float, mu: float, sigma: float, dense: float, min_step: float) -> float:
    """The wait until the next poll when the duration is believed LogNormal(mu, sigma) and
    ``elapsed`` seconds have passed: the smallest ``s`` with ``s >= spacing(elapsed + s)``."""
    elapsed = max(elapsed, 1e-3)
    hi = _spacing(elapsed, mu, sigma, dense)
    if hi <= min_step or min_step >= _spacing(elapsed + min_step, mu, sigma, dense):
        step = min_step
    else:
        lo = min_step
        for _ in range(12):  # bisection on a log scale: ~0.5% precision over 8 decades
            mid = math.sqrt(lo * hi)
            if mid >= _spacing(elapsed + mid, mu, sigma, dense):
                hi = mid
            else:
                lo = mid
        step = hi
    late = elapsed - math.exp(mu + 3.0 * sigma)
    if late > 0:  # far beyond what the distribution expects: back off with the lateness
        step = max(step, _OVERDUE_FRACTION * late)
    return step


class _LogStats:
    """Mean and variance of log-values, each sample's weight decaying with time: O(1) memory.

    Forgetting goes by time, not by sample count, because a batch submitted together completes
    in order of duration: a per-sample window would remember only its slowest jobs. A sample may
    come with the variance of its own measurement error (a duration is only known to lie between
    two polls); its mean is taken out of the spread, which is never more than halved that way.
    """

    __slots__ = ("mean", "n", "noise", "t", "var", "weight")

    def __init__(self) -> None:
        self.n = 0
        self.weight = 0.0
        self.mean = 0.0
        self.var = 0.0
        self.noise = 0.0
        self.t = 0.0

    def add(self, x: float, now: float, weight: float = 1.0, noise: float = 0.0) -> None:
        old = self.weight
        if self.n and now > self.t:
            old *= math.exp((self.t - now) / _MEMORY)
        self.n += 1
        self.t = max(self.t, now)
        total = old + weight
        d = x - self.mean
        self.mean += weight * d / total
        self.var = (old * self.var + weight * d * (x - self.mean)) / total
        self.noise += weight * (noise - self.noise) / total
        self.weight = total

    def sigma(self, prior: float) -> float:
        """The spread, shrunk towards ``prior`` while the samples weigh little."""
        var = max(0.25 * self.var, self.var - self.noise)  # never more than halve the spread
        var = (self.weight * var + _PRIOR_WEIGHT * prior * prior) / (self.weight + _PRIOR_WEIGHT)
        return max(_MIN_SIGMA, math.sqrt(var))


class _KeyModel:
    """What was learned for one (provider, model): durations, and how good estimated_time is."""

    __slots__ = ("durations", "estimated", "estimates")

    def __init__(self) -> None:
        self.durations = _LogStats()  # log(seconds from submission to completion)
        self.estimates = _LogStats()  # log(actual duration / estimated_time)
        self.estimated = _LogStats()  # log(duration) of the same tasks, with the same weights

    def belief(self, estimate: float | None) -> tuple[float, float] | None:
        """(mu, sigma) of the log-duration of a task, or None when nothing is known.

        An ``estimated_time`` is used once it has proven clearly more precise than the spread of
        the durations themselves, or while nothing else is known; it is never combined with the
        learned distribution, because a constant estimate would then be counted twice.
        """
        d = self.durations
        learned = (d.mean, d.sigma(_PRIOR_SIGMA)) if d.n >= _MIN_SAMPLES else None
        if estimate is None:
            return learned
        e = self.estimates
        if e.weight >= _MIN_SAMPLES:
            hinted = (math.log(estimate) + e.mean, e.sigma(_PRIOR_SIGMA))
            if learned is None or hinted[1] < _BETTER * self.estimated.sigma(_PRIOR_SIGMA):
                return hinted
            return learned
        return learned or (math.log(estimate), _PRIOR_SIGMA)


class _Watch:
    """One waiting task: everything the scheduler keeps about it (a few hundred bytes)."""

    __slots__ = (
        "a_p",  # first positive progress since the last restart (anchor of the slope)
        "a_t",
        "c_p",  # latest positive progress
        "c_t",
        "deadline",
        "errors",  # consecutive failed polls
        "estimate",  # latest estimated_time (seconds from submission)
        "km",
        "last_t",  # time of the latest non-terminal observation
        "miss_t",  # when the task first outlived a prediction
        "on_done",  # None once the watch has ended: its heap entry, if any, is stale
        "polls",
        "queue",
        "ref",
        "seq",
        "t0",  # submission time
        "w_hi",  # end of the completion window predicted by the latest plan
        "z_t",  # latest time the task had certainly not started (progress 0, or submission)
    )

    def __init__(
        self,
        ref: TaskRef,
        on_done: DoneCallback,
        seq: int,
        queue: _ProviderQueue,
        km: _KeyModel,
        t0: float,
        deadline: float | None,
    ) -> None:
        self.ref = ref
        self.on_done: DoneCallback | None = on_done
        self.seq = seq
        self.queue = queue
        self.km = km
        self.t0 = t0
        self.deadline = deadline
        self.polls = 0
        self.errors = 0
        self.estimate: float | None = None
        self.last_t: float | None = None
        self.z_t: float | None = t0
        self.a_t: float | None = None
        self.a_p = 0.0
        self.c_t: float | None = None
        self.c_p = 0.0
        self.w_hi = math.inf
        self.miss_t: float | None = None


_HeapEntry = tuple[float, int, _Watch]
_PollOrder = tuple[_Watch, float]  # a task to poll now, and when it was due


class _ProviderQueue:
    """The waiting tasks of one provider, and that provider's 429 pause."""

    __slots__ = ("heap", "paused_until", "rate_limit_streak", "stale")

    def __init__(self) -> None:
        self.heap: list[_HeapEntry] = []
        self.paused_until = -math.inf
        self.rate_limit_streak = 0
        self.stale = 0


class _Budget:
    """At most ``n`` poll starts in any window of ``window`` seconds (``n / window`` ≤ the rate)."""

    __slots__ = ("starts", "window")

    def __init__(self, rate: float) -> None:
        n = max(1, math.floor(rate + _EPS))
        self.window = max(1.0, n / rate) + 1e-6  # a hair over, for closed windows too
        self.starts: collections.deque[float] = collections.deque(maxlen=n)

    def next_start(self) -> float:
        starts = self.starts
        if len(starts) < (starts.maxlen or 0):
            return -math.inf
        return starts[0] + self.window


class _LagHistogram:
    """Log-spaced histogram of lags from 0.1 ms to ~100 s: p50/p99 in O(1) memory."""

    __slots__ = ("counts", "max")

    _EDGES: tuple[float, ...] = tuple(1e-4 * 1.25**i for i in range(63))

    def __init__(self) -> None:
        self.counts = [0] * (len(self._EDGES) + 1)
        self.max = 0.0

    def add(self, lag: float) -> None:
        lag = max(lag, 0.0)
        self.counts[bisect.bisect_left(self._EDGES, lag)] += 1
        if lag > self.max:
            self.max = lag

    def quantile(self, q: float) -> float:
        total = sum(self.counts)
        if total == 0:
            return 0.0
        rank = q * total
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank and count:
                return self.max if i >= len(self._EDGES) else min(self._EDGES[i], self.max)
        return self.max


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# -- the scheduler ------------------------------------------------------------------------------


class PollScheduler:
    """Watches every outstanding task of a session with one driver task.

    ``poll(ref)`` performs one status check and returns the task's state, raising
    :mod:`flux_async.errors` exceptions. ``clock`` defaults to the running loop's time and
    ``sleep`` to :func:`anyio.sleep`; tests inject virtual ones. Use from one event loop.
    """

    def __init__(
        self,
        poll: Callable[[TaskRef], Awaitable[TaskState]],
        *,
        policy: PollPolicy = PollPolicy(),
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        retry_budget: RetryBudget | None = None,
    ) -> None:
        self._poll = poll
        self._retry_budget = retry_budget
        self.policy = policy
        self._default_clock = clock is None
        self._clock = clock or self._loop_time
        self._sleep = sleep or anyio.sleep
        # The real loop's clock and sleep: the driver then rests on a loop timer.
        self._default_timing = clock is None and sleep is None
        self._rng = rng or random.Random()
        # Poll errors and 429s without Retry-After back off like any idempotent retry.
        self._error_policy = RetryPolicy(
            base_delay=min(1.0, policy.max_interval),
            max_delay=policy.max_interval,
            jitter="equal",
        )
        self._pause_policy = RetryPolicy(
            base_delay=min(1.0, policy.rate_limit_pause_cap),
            max_delay=policy.rate_limit_pause_cap,
            jitter="equal",
        )
        self._watches: dict[str, _Watch] = {}
        self._queues: dict[str, _ProviderQueue] = {}
        self._models: dict[tuple[str, str | None], _KeyModel] = {}
        self._ready: collections.deque[tuple[_Watch, TaskState]] = collections.deque()
        self._seq = itertools.count()
        self._budget = (
            None if policy.max_polls_per_second is None else _Budget(policy.max_polls_per_second)
        )
        self._tg: anyio.abc.TaskGroup | None = None
        # Polls handed to the workers, and the event an idle worker waits on: a plain queue, so
        # that taking an order costs no trip through the event loop.
        self._orders: collections.deque[_PollOrder] = collections.deque()
        self._idle = Parking()  # workers with nothing to send
        self._workers = 0
        self._sleep_scope: anyio.CancelScope | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._wake_at = -math.inf  # when the sleeping driver will wake by itself
        self._blocked = False  # due polls are waiting for an in-flight slot
        self._in_flight = 0
        self._lag = _LagHistogram()
        self._polls_sent = 0
        self._polls_failed = 0
        self._retries = 0
        self._rate_limited = 0
        self._finished = 0
        self._gave_up = 0
        self._timed_out = 0
        self._wakeups = 0

    def __repr__(self) -> str:
        return f"<PollScheduler outstanding={len(self._watches)} in_flight={self._in_flight}>"

    # -- public API ------------------------------------------------------------------------------

    def watch(
        self,
        ref: TaskRef,
        on_done: DoneCallback,
        *,
        submitted_at: float | None = None,
        deadline: float | None = None,
        initial: TaskState | None = None,
    ) -> None:
        """Start watching a task. Sync and cheap: no request is made here.

        ``on_done`` is called exactly once, synchronously from the scheduler's own tasks, with
        the terminal :class:`TaskState`, or with the exception that ended the watch: a poll error
        that is not retryable, the last error after ``max_poll_errors`` consecutive retryable
        ones, or :class:`~flux_async.errors.TaskTimeoutError` once ``deadline`` (clock time)
        passes. ``submitted_at`` (clock time; default: now) is when the provider accepted the
        task; ``initial`` is a state already known (e.g. from the submit response).

        Raises ValueError if the task is already watched.
        """
        task_id = ref.task_id
        if task_id in self._watches:
            raise ValueError(f"task {task_id} is already watched")
        now = self._clock()
        provider = ref.provider
        queue = self._queues.get(provider)
        if queue is None:
            queue = self._queues[provider] = _ProviderQueue()
        key = (provider, ref.model)
        km = self._models.get(key)
        if km is None:
            km = self._models[key] = _KeyModel()
        t0 = now if submitted_at is None else submitted_at
        rec = _Watch(ref, on_done, next(self._seq), queue, km, t0, deadline)
        self._watches[task_id] = rec
        if initial is not None:
            if initial.terminal:
                self._ready.append((rec, initial))
                self._wake()
                return
            self._observe(rec, initial, now)
        self._push(rec, self._plan(rec, now))

    def unwatch(self, task_id: str) -> bool:
        """Stop watching a task without calling its ``on_done``; True if it was watched."""
        rec = self._watches.pop(task_id, None)
        if rec is None:
            return False
        rec.on_done = None
        rec.queue.stale += 1
        return True

    def outstanding(self) -> list[TaskRef]:
        """The refs of the tasks still watched."""
        return [rec.ref for rec in self._watches.values()]

    def statistics(self) -> SchedulerStatistics:
        """A frozen snapshot of the counters."""
        finished = self._finished
        return SchedulerStatistics(
            outstanding=len(self._watches),
            in_flight=self._in_flight,
            polls_sent=self._polls_sent,
            polls_failed=self._polls_failed,
            retries=self._retries,
            rate_limited=self._rate_limited,
            finished=finished,
            gave_up=self._gave_up,
            timed_out=self._timed_out,
            wakeups=self._wakeups,
            polls_per_finished=self._polls_sent / finished if finished else 0.0,
            lag_p50=self._lag.quantile(0.5),
            lag_p99=self._lag.quantile(0.99),
            max_lag=self._lag.max,
        )

    async def run(self) -> None:
        """The driver: sends every due poll, until cancelled. Run it in the owner's task group."""
        if self._tg is not None:
            raise RuntimeError("PollScheduler.run() is already running")
        if self._default_clock:
            self._clock = self._loop_time  # this run's loop
        orders = self._orders
        try:
            try:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    while True:
                        wake_at = self._dispatch()
                        self._wake_at = wake_at
                        if self._default_timing:
                            await self._rest_on_loop(wake_at)
                        else:
                            await self._rest(wake_at)
                        self._wakeups += 1
            finally:
                # Polls handed over but never sent go back to the heap, so that a later
                # run() still watches every task.
                while orders:
                    rec, _ = orders.popleft()
                    if rec.on_done is not None:
                        self._push(rec, self._clock())
        finally:
            self._tg = None
            self._idle = Parking()
            self._sleep_scope = None
            self._wakeup = None
            self._wake_at = -math.inf
            self._workers = self._in_flight = 0

    async def _rest_on_loop(self, wake_at: float) -> None:
        """Sleep until ``wake_at`` (loop time) or until :meth:`_wake`: a future and a timer.

        A cancel scope would do the same, but cancelling one costs far more than setting a
        future, and the driver is woken about once per batch of submissions.
        """
        loop = asyncio.get_running_loop()
        wakeup: asyncio.Future[None] = loop.create_future()
        self._wakeup = wakeup
        timer = None if wake_at == math.inf else loop.call_at(wake_at, _resolve, wakeup)
        try:
            await wakeup
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    async def _rest(self, wake_at: float) -> None:
        """Sleep with the injected clock and sleep until ``wake_at`` or until :meth:`_wake`."""
        with anyio.CancelScope() as scope:
            self._sleep_scope = scope
            if wake_at == math.inf:
                await anyio.sleep_forever()
            else:
                await self._sleep(max(0.0, wake_at - self._clock()))
        self._sleep_scope = None

    def _loop_time(self) -> float:
        """The default clock: the running loop's time, as anyio.current_time() gives it, but
        read directly from the asyncio loop (ten times cheaper) when that is the backend."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return anyio.current_time()
        self._clock = loop.time
        return loop.time()

    # -- the driver --------------------------------------------------------------------------------

    def _wake(self) -> None:
        """Interrupt the driver's sleep so that it looks at the heaps again."""
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            self._wake_at = -math.inf
            if not wakeup.done():
                wakeup.set_result(None)
            return
        scope = self._sleep_scope
        if scope is not None:
            self._sleep_scope = None
            self._wake_at = -math.inf
            scope.cancel()

    def _dispatch(self) -> float:
        """Start every due poll that a slot and the budget allow; end watches whose deadline
        passed. Returns when the driver must look again (inf: only when woken)."""
        self._blocked = False
        while self._ready:
            rec, state = self._ready.popleft()
            if rec.on_done is not None:
                self._finish(rec, state)
        tg, orders = self._tg, self._orders
        assert tg is not None
        now = self._clock()
        limit = now + _EPS
        policy = self.policy
        budget = self._budget
        queues = self._queues.values()
        while True:
            best: _ProviderQueue | None = None
            best_due = math.inf
            for queue in queues:
                heap = queue.heap
                while heap and heap[0][2].on_done is None:
                    heapq.heappop(heap)
                    queue.stale -= 1
                if heap:
                    due = heap[0][0]
                    if due < queue.paused_until:
                        due = queue.paused_until
                    if due < best_due:
                        best, best_due = queue, due
            if best is None or best_due > limit:
                return best_due
            rec = best.heap[0][2]
            if rec.deadline is not None and rec.deadline <= limit:
                heapq.heappop(best.heap)
                self._timed_out += 1
                self._finish(
                    rec,
                    TaskTimeoutError(
                        f"task {rec.ref.task_id} did not finish before its deadline",
                        task_id=rec.ref.task_id,
                    ),
                )
                continue
            if self._in_flight >= policy.max_in_flight:
                self._blocked = True
                return math.inf  # a finishing poll dispatches again
            if budget is not None:
                allowed = budget.next_start()
                if allowed > now:  # no tolerance here: the budget is a promise
                    return allowed
                budget.starts.append(now)
            heapq.heappop(best.heap)
            self._in_flight += 1
            orders.append((rec, best_due))
            # One parked worker takes the order. With none parked, a new one starts unless
            # there are max_in_flight already: then a busy one takes it when its poll is done.
            if not self._idle.wake_one() and self._workers < policy.max_in_flight:
                self._workers += 1
                tg.start_soon(self._worker)

    async def _worker(self) -> None:
        """Send the polls handed over by :meth:`_dispatch`, one at a time."""
        clock = self._clock
        orders = self._orders
        while True:
            while not orders:
                await self._idle.wait()
            rec, due = orders.popleft()
            start = clock()
            self._lag.add(start - due)
            self._polls_sent += 1
            rec.polls += 1
            if rec.errors == 0 and self._retry_budget is not None:
                self._retry_budget.record_request()  # a first attempt, not a retry
            try:
                state = await self._poll(rec.ref)
            except Exception as exc:
                self._in_flight -= 1
                self._polls_failed += 1
                if rec.on_done is not None:
                    self._after_error(rec, exc, clock())
            except BaseException:
                if rec.on_done is not None:  # cancelled with the scheduler: poll it next run
                    self._push(rec, clock())
                raise
            else:
                self._in_flight -= 1
                if rec.on_done is not None:
                    self._after_state(rec, state, start, clock())
            if self._blocked:
                wake_at = self._dispatch()
                if wake_at < self._wake_at:
                    self._wake()

    def _after_state(self, rec: _Watch, state: TaskState, start: float, now: float) -> None:
        rec.errors = 0
        rec.queue.rate_limit_streak = 0
        observed = 0.5 * (start + now)  # the provider answered somewhere in between
        if state.terminal:
            if state.status is TaskStatus.SUCCEEDED:
                self._learn(rec, observed)
            self._finish(rec, state)
            return
        self._observe(rec, state, observed)
        self._push(rec, self._plan(rec, now))

    def _after_error(self, rec: _Watch, exc: Exception, now: float) -> None:
        if isinstance(exc, RateLimitError):
            # A 429 is about the provider, not this task: pause all of the provider's polls.
            self._rate_limited += 1
            self._retries += 1
            queue = rec.queue
            if exc.retry_after is not None and exc.retry_after >= 0:
                pause = min(exc.retry_after, self.policy.rate_limit_pause_cap)
            else:
                if now >= queue.paused_until:  # a new episode, not another answer to the last one
                    queue.rate_limit_streak += 1
                attempt = max(0, queue.rate_limit_streak - 1)
                pause = backoff_delay(self._pause_policy, attempt, self._rng)
            queue.paused_until = max(queue.paused_until, now + pause)
            self._push(rec, now)
            return
        if is_retryable_poll(exc):
            rec.errors += 1
            if rec.errors >= self.policy.max_poll_errors or (
                self._retry_budget is not None and not self._retry_budget.try_spend_retry()
            ):
                self._finish(rec, exc)
                return
            self._retries += 1
            self._push(rec, now + backoff_delay(self._error_policy, rec.errors - 1, self._rng))
            return
        self._finish(rec, exc)

    def _push(self, rec: _Watch, due: float) -> None:
        """Queue ``rec`` for a poll at ``due`` (or for its timeout, if that comes first)."""
        if rec.deadline is not None and due > rec.deadline:
            due = rec.deadline
        quantum = self.policy.quantum
        if quantum > 0:
            due = math.ceil(due / quantum - 1e-7) * quantum
        queue = rec.queue
        heapq.heappush(queue.heap, (due, rec.seq, rec))
        if queue.stale > 64 and queue.stale > len(queue.heap) // 2:
            queue.heap = [entry for entry in queue.heap if entry[2].on_done is not None]
            heapq.heapify(queue.heap)
            queue.stale = 0
        if due < self._wake_at:
            self._wake()

    def _finish(self, rec: _Watch, outcome: TaskState | BaseException) -> None:
        callback = rec.on_done
        if callback is None:
            return
        rec.on_done = None
        if self._watches.get(rec.ref.task_id) is rec:
            del self._watches[rec.ref.task_id]
        self._finished += 1
        if isinstance(outcome, BaseException):
            self._gave_up += 1
        try:
            callback(outcome)
        except Exception:
            # The callback belongs to the session; one failing must not stop the other watches.
            logger.exception("on_done callback for task %s raised", rec.ref.task_id)

    # -- the timing model ---------------------------------------------------------------------------

    def _observe(self, rec: _Watch, state: TaskState, t: float) -> None:
        """Take in a non-terminal state seen at time ``t``."""
        rec.last_t = t
        if state.estimated_time is not None and state.estimated_time > 0:
            rec.estimate = float(state.estimated_time)
        if t > rec.w_hi and rec.miss_t is None:
            rec.miss_t = rec.w_hi  # still running after the predicted completion
        progress = state.progress
        if progress is None or not math.isfinite(progress):
            return
        p = min(100.0, float(progress))
        if p <= 0:
            # Not started yet (queued): the slope can only begin after this.
            rec.z_t = t
            rec.a_t = rec.c_t = None
        elif rec.c_t is not None and p < rec.c_p:
            # Progress went backwards (a restarted job): start over from here.
            rec.z_t = None
            rec.a_t, rec.a_p = t, p
            rec.c_t, rec.c_p = t, p
        else:
            if rec.a_t is None:
                rec.a_t, rec.a_p = t, p
            rec.c_t, rec.c_p = t, p

    def _window(self, rec: _Watch) -> tuple[float, float]:
        """The completion window ``[lo, hi]`` that the reported progress allows (hi may be inf).

        Progress is taken as linear from an unknown start: two positive reports give the slope,
        each with its rounding error; a zero report (or the submission) only says that the line
        was still below 1% then. A report that fits no line restarts the slope from itself.
        """
        c_t = rec.c_t
        if c_t is None:
            return -math.inf, math.inf
        c_lo = rec.c_p - _P_BELOW
        c_hi = rec.c_p + _P_ABOVE
        r_lo, r_hi = 0.0, math.inf
        if rec.z_t is not None and c_t > rec.z_t:
            r_lo = (c_lo - 1.0) / (c_t - rec.z_t)
        a_t = rec.a_t
        if a_t is not None and c_t > a_t:
            dt = c_t - a_t
            s_lo = (c_lo - (rec.a_p + _P_ABOVE)) / dt
            s_hi = (c_hi - (rec.a_p - _P_BELOW)) / dt
            if max(r_lo, s_lo) <= s_hi:
                r_lo, r_hi = max(r_lo, s_lo), s_hi
            else:
                # The line through the anchor no longer fits (the job sped up, or its progress
                # is not linear): restart the slope from the latest report.
                rec.a_t, rec.a_p = c_t, rec.c_p
                rec.z_t = None
                r_lo = 0.0
        lo = c_t + max(0.0, 100.0 - c_hi) / r_hi if r_hi < math.inf else c_t
        hi = c_t + (100.0 - c_lo) / r_lo if r_lo > 0 else math.inf
        return lo, hi

    def _plan(self, rec: _Watch, now: float) -> float:
        """When to poll ``rec`` next (clock time, before rounding to the quantum)."""
        policy = self.policy
        tau = policy.target_delay
        if rec.polls == 0 and policy.first_poll is not None:
            return max(now, rec.t0 + policy.first_poll)
        lo, hi = self._window(rec)
        rec.w_hi = hi
        if hi < math.inf and rec.a_t is not None and rec.a_t < (rec.c_t or -math.inf):
            # Two reports pin the completion to [lo, hi]: step through it at most tau apart.
            # While the window is still ahead, fresh progress outranks any earlier lateness:
            # the lateness stretch applies only once the window itself has passed.
            ahead = now <= hi
            if lo - now > policy.max_interval:  # far away: check the prediction on the way
                return self._floor(
                    rec,
                    now,
                    now + max(policy.max_interval, 0.75 * (lo - now)),
                    jitter=False,
                    stretch=not ahead,
                )
            return self._floor(rec, now, self._through(lo, hi, now), jitter=False, stretch=not ahead)
        belief = rec.km.belief(rec.estimate)
        if belief is not None:
            mu, sigma = belief
            b_lo = rec.t0 + math.exp(mu - 2.0 * sigma)
            b_hi = rec.t0 + math.exp(mu + 2.0 * sigma)
            if b_hi - b_lo <= 4.0 * tau and b_hi < hi:
                # A belief this narrow (a trusted estimated_time) is a window too.
                rec.w_hi = b_hi
                if now < b_hi:
                    return self._floor(rec, now, self._through(b_lo, b_hi, now), jitter=False)
                return self._floor(rec, now, now + tau, jitter=False)  # late: backs off via miss_t
            step = _belief_step(now - rec.t0, mu, sigma, 2.0 * tau, policy.min_interval)
            return self._floor(rec, now, min(now + step, hi), jitter=False)
        if rec.c_t is not None:
            # One report only, nothing learned yet: look again once the elapsed time since the
            # task was last seen not started has doubled, to measure the slope.
            base = rec.c_t - rec.z_t if rec.z_t is not None else 0.5 * (now - rec.t0)
            step = min(policy.max_interval, max(tau, base))
            return self._floor(rec, now, min(now + step, hi), jitter=True)
        first = policy.first_poll or _FIRST_POLL
        if rec.polls == 0:
            return rec.t0 + first
        interval = min(policy.max_interval, first * policy.backoff**rec.polls)
        return self._floor(rec, now, now + interval, jitter=True)

    def _through(self, lo: float, hi: float, now: float) -> float:
        """The next poll when completion lies in ``[lo, hi]``: the window (what is left of it)
        is split into equal steps of at most ``target_delay``, the last one at ``hi``."""
        start = max(lo, now)
        steps = max(1, math.ceil((hi - start) / self.policy.target_delay - _EPS))
        return start + (hi - start) / steps

    def _floor(
        self, rec: _Watch, now: float, target: float, *, jitter: bool, stretch: bool = True
    ) -> float:
        """Apply jitter, ``min_interval`` and, for a task later than predicted (unless
        ``stretch`` is False), a spacing that grows with its lateness."""
        policy = self.policy
        wait = target - now
        if jitter and policy.jitter:
            wait = min(
                policy.max_interval, wait * (1.0 + policy.jitter * self._rng.uniform(-1.0, 1.0))
            )
        if stretch and rec.miss_t is not None:
            late = _OVERDUE_FRACTION * (now - rec.miss_t)
            wait = max(wait, min(policy.max_interval, late))
        return now + max(wait, policy.min_interval)

    def _learn(self, rec: _Watch, done_at: float) -> None:
        """Record the duration of a task that just succeeded, for the next tasks of its model."""
        hi = done_at - rec.t0
        if hi <= 0:
            return
        lo = 0.0 if rec.last_t is None else rec.last_t - rec.t0
        # It finished between the last two polls; a first poll that already found it done only
        # bounds it from above: assume it took at least a quarter of that, so the estimate can
        # still move down.
        lo = max(lo, hi / 4.0)
        duration = math.sqrt(lo * hi)
        km = rec.km
        km.durations.add(math.log(duration), done_at)
        if rec.estimate is not None:
            # Judging an estimate needs precise durations: weigh each by how tightly the polls
            # bracketed it (half weight for +-2.5%), and discount that imprecision (uniform
            # between the two polls, on a log scale) from the estimate's spread.
            width = math.log(hi / lo)
            noise = width * width / 12.0
            weight = 1.0 / (1.0 + (width / 0.05) ** 2)
            km.estimates.add(math.log(duration / rec.estimate), done_at, weight, noise)
            km.estimated.add(math.log(duration), done_at, weight, noise)
