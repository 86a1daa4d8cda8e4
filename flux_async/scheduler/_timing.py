"""The timing model: when to poll a task next, as plain functions over small values.

It owns everything the scheduler knows about *time*: what a task's reported progress says about
its completion (:func:`observe`, :func:`window`), the schedule that the completion-time
distribution learned per provider and model implies (:func:`spacing`, :func:`belief_step`; the
distribution itself, :class:`~._learned.Learned`, lives in ``_learned`` and is fed here by
:func:`learn`), and the decision itself (:func:`next_poll`), including the sparse safety-net
schedule of a task whose completion a webhook should announce (:func:`push_poll`) and where a
wake-up puts its poll (:func:`wake_poll`, :func:`follow_up`). Each function takes the clock
reading it needs as an argument and the random source for its jitter, so it runs without an
event loop or a clock and is tested as a plain function.

It must not import anyio, asyncio, aiohttp, the driver, the transport, the session or the
codecs: it sees a :class:`WatchState`, a :class:`~flux_async.models.TaskState`, a
:class:`PollPolicy` and what ``_learned`` holds, nothing else. The driver keeps one :class:`WatchState` per waiting task
(its own record extends it), so the model costs no allocation per poll.
"""

from __future__ import annotations

import functools
import math
import random
import statistics

from ..models import TaskState
from ._learned import Learned, LogStats
from ._policy import PollPolicy

__all__ = [
    "EPS",
    "Learned",
    "LogStats",
    "WatchState",
    "belief_step",
    "follow_up",
    "hazard_spacing",
    "learn",
    "next_poll",
    "observe",
    "push_poll",
    "push_safety",
    "spacing",
    "through",
    "wake_poll",
    "window",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # 2·φ(0): makes hazard_spacing `dense` at the median
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)

# Reported progress is an integer percent, truncated or rounded depending on the provider: a
# report of p means the true progress lies in [p - 0.5, p + 1).
_P_BELOW = 0.5
_P_ABOVE = 1.0
# The first poll, and start of the backoff, when nothing is known.
_FIRST_POLL = 1.0
# Once a task is later than predicted, its next polls are spaced by this fraction of the lateness.
_OVERDUE_FRACTION = 0.25
# The schedule when only the learned distribution is known (see `spacing`), in target delays and
# in standard scores of the log-duration: sparse (the hazard rule) before the 0.5% quantile, at
# most _SPARSE apart from there, _DENSE apart from the 38% quantile on. Half the completions then
# wait at most about 0.4 target delays, and all but the earliest half-percent at most 1.5.
_TAIL_Z = -2.58
_DENSE_Z = -0.3
_SPARSE = 1.5
_DENSE = 0.6
EPS = 1e-9
# A task whose completion a webhook should announce is polled, after its safety poll, every
# quarter of its age (at most PollPolicy.push_max_interval apart): a lost webhook delays its
# result by at most a quarter of its duration, at a number of polls that grows with the log of it.
_PUSH_AGE_FRACTION = 0.25
# A webhook comes within one delivery of the completion it announces: a task confirmed by the
# poll a wake-up brought forward took between this fraction of its age at the announcement and
# that age (a loose bracket; the poll's own time is a much later upper bound when never polled).
_ANNOUNCED_LO = 0.9


def hazard_spacing(elapsed: float, mu: float, sigma: float, dense: float) -> float:
    """Poll spacing at ``elapsed`` seconds for durations ~ LogNormal(mu, sigma) that minimises
    ``polls + λ·mean delay``: proportional to ``1 / sqrt(hazard)``, scaled to ``dense`` at the
    median."""
    z = (math.log(elapsed) - mu) / sigma
    z = min(8.0, max(-8.0, z))
    mills = 0.5 * math.erfc(z * _INV_SQRT2) * _SQRT_2PI * math.exp(0.5 * z * z)  # Q(z) / φ(z)
    return dense * math.sqrt(_SQRT_2_OVER_PI * math.exp(sigma * z) * mills)


def spacing(elapsed: float, mu: float, sigma: float, tau: float) -> float:
    """Poll spacing at ``elapsed`` seconds for durations ~ LogNormal(mu, sigma), for a target
    delay ``tau``.

    What users compare is the median delay and its tail, not the mean. Minimising requests
    for a given median delay puts polls on two levels: far apart where completions are
    unlikely, close together where the hazard is high (a poll there is the one most likely to
    find the task done). So: the hazard rule while completions are rare (before the
    distribution's 0.5% quantile: this is where requests are saved), then 1.5 ``tau`` apart
    (which bounds the delay of nearly every task), and 0.6 ``tau`` apart from the 38% quantile
    on, where most completions fall.
    """
    z = (math.log(elapsed) - mu) / sigma
    if z >= _DENSE_Z:
        return _DENSE * tau
    if z >= _TAIL_Z:
        return _SPARSE * tau
    return max(_SPARSE * tau, hazard_spacing(elapsed, mu, sigma, tau))


def belief_step(elapsed: float, mu: float, sigma: float, tau: float, min_step: float) -> float:
    """The wait until the next poll when the duration is believed LogNormal(mu, sigma) and
    ``elapsed`` seconds have passed: the smallest ``s`` with ``s >= spacing(elapsed + s)``.

    The spacing never grows with time, so when it is the same a whole step later it is that
    step (the common case, on either level of the schedule: no search)."""
    elapsed = max(elapsed, 1e-3)
    hi = spacing(elapsed, mu, sigma, tau)
    if hi <= min_step or min_step >= spacing(elapsed + min_step, mu, sigma, tau):
        step = min_step
    elif spacing(elapsed + hi, mu, sigma, tau) == hi:
        step = hi
    else:
        lo = min_step
        for _ in range(12):  # bisection on a log scale: ~0.5% precision over 8 decades
            mid = math.sqrt(lo * hi)
            if mid >= spacing(elapsed + mid, mu, sigma, tau):
                hi = mid
            else:
                lo = mid
        step = hi
    late = elapsed - math.exp(mu + 3.0 * sigma)
    if late > 0:  # far beyond what the distribution expects: back off with the lateness
        step = max(step, _OVERDUE_FRACTION * late)
    return step


class WatchState:
    """What the timing model remembers about one waiting task: a dozen numbers.

    Times are clock readings. The driver's per-task record extends this class, so these slots
    live in the one small object the heap holds.
    """

    __slots__ = (
        "a_p",  # first positive progress since the last restart (anchor of the slope)
        "a_t",
        "c_p",  # latest positive progress
        "c_t",
        "estimate",  # latest estimated_time (seconds from submission)
        "last_t",  # time of the latest non-terminal observation
        "live",  # still waited on (see Learned.enrol)
        "miss_t",  # when the task first outlived a prediction
        "polls",  # polls sent so far
        "push",  # a webhook should announce the completion: polled sparsely (push_poll)
        "t0",  # submission time
        "w_hi",  # end of the completion window predicted by the latest plan
        "z_t",  # latest time the task had certainly not started (progress 0, or submission)
    )

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.live = False
        self.polls = 0
        self.push = False
        self.estimate: float | None = None
        self.last_t: float | None = None
        self.z_t: float | None = t0
        self.a_t: float | None = None
        self.a_p = 0.0
        self.c_t: float | None = None
        self.c_p = 0.0
        self.w_hi = math.inf
        self.miss_t: float | None = None


def observe(w: WatchState, state: TaskState, t: float) -> None:
    """Take in a non-terminal state seen at time ``t``."""
    w.last_t = t
    if state.estimated_time is not None and state.estimated_time > 0:
        w.estimate = float(state.estimated_time)
    if t > w.w_hi and w.miss_t is None:
        w.miss_t = w.w_hi  # still running after the predicted completion
    progress = state.progress
    if progress is None or not math.isfinite(progress):
        return
    p = min(100.0, float(progress))
    if p <= 0:
        # Not started yet (queued): the slope can only begin after this.
        w.z_t = t
        w.a_t = w.c_t = None
    elif w.c_t is not None and p < w.c_p:
        # Progress went backwards (a restarted job): start over from here.
        w.z_t = None
        w.a_t, w.a_p = t, p
        w.c_t, w.c_p = t, p
    else:
        if w.a_t is None:
            w.a_t, w.a_p = t, p
        w.c_t, w.c_p = t, p


def window(w: WatchState) -> tuple[float, float]:
    """The completion window ``[lo, hi]`` that the reported progress allows (hi may be inf).

    Progress is taken as linear from an unknown start: two positive reports give the slope,
    each with its rounding error; a zero report (or the submission) only says that the line
    was still below 1% then. A report that fits no line restarts the slope from itself (the
    one change this makes to ``w``).
    """
    c_t = w.c_t
    if c_t is None:
        return -math.inf, math.inf
    c_lo = w.c_p - _P_BELOW
    c_hi = w.c_p + _P_ABOVE
    r_lo, r_hi = 0.0, math.inf
    if w.z_t is not None and c_t > w.z_t:
        r_lo = (c_lo - 1.0) / (c_t - w.z_t)
    a_t = w.a_t
    if a_t is not None and c_t > a_t:
        dt = c_t - a_t
        s_lo = (c_lo - (w.a_p + _P_ABOVE)) / dt
        s_hi = (c_hi - (w.a_p - _P_BELOW)) / dt
        if max(r_lo, s_lo) <= s_hi:
            r_lo, r_hi = max(r_lo, s_lo), s_hi
        else:
            # The line through the anchor no longer fits (the job sped up, or its progress
            # is not linear): restart the slope from the latest report.
            w.a_t, w.a_p = c_t, w.c_p
            w.z_t = None
            r_lo = 0.0
    lo = c_t + max(0.0, 100.0 - c_hi) / r_hi if r_hi < math.inf else c_t
    hi = c_t + (100.0 - c_lo) / r_lo if r_lo > 0 else math.inf
    return lo, hi


def next_poll(
    w: WatchState, learned: Learned, policy: PollPolicy, now: float, rng: random.Random
) -> float:
    """When to poll the task next (clock time, before the driver rounds it to the quantum).

    In order: the window its progress pins down, a narrow belief (a trusted ``estimated_time``),
    the learned distribution of durations, one progress report alone, and otherwise the
    geometric backoff. Records the predicted end of the completion window in ``w.w_hi``.
    A task that expects a webhook follows :func:`push_poll` instead.
    """
    if w.push:
        return push_poll(w, learned, policy, now, rng)
    tau = policy.target_delay
    if w.polls == 0 and policy.first_poll is not None:
        first = w.t0 + policy.first_poll
        return first if first > now else now
    lo, hi = window(w)
    w.w_hi = hi
    if hi < math.inf and w.a_t is not None and w.a_t < (w.c_t or -math.inf):
        # Two reports pin the completion to [lo, hi]: step through it at most tau apart.
        # While the window is still ahead, fresh progress outranks any earlier lateness:
        # the lateness stretch applies only once the window itself has passed.
        ahead = now <= hi
        if lo - now > policy.max_interval:  # far away: check the prediction on the way
            target = now + max(policy.max_interval, 0.75 * (lo - now))
        else:
            target = through(lo, hi, now, tau)
        return _floor(w, policy, rng, now, target, jitter=False, stretch=not ahead)
    belief = learned.belief(w.estimate)
    if belief is not None:
        mu, sigma = belief
        b_lo = w.t0 + math.exp(mu - 2.0 * sigma)
        b_hi = w.t0 + math.exp(mu + 2.0 * sigma)
        if b_hi - b_lo <= 4.0 * tau and b_hi < hi:
            # A belief this narrow (a trusted estimated_time) is a window too.
            w.w_hi = b_hi
            if now < b_hi:
                return _floor(w, policy, rng, now, through(b_lo, b_hi, now, tau), jitter=False)
            return _floor(w, policy, rng, now, now + tau, jitter=False)  # late: backs off via miss_t
        step = belief_step(now - w.t0, mu, sigma, tau, policy.min_interval)
        return _floor(w, policy, rng, now, min(now + step, hi), jitter=False)
    if w.c_t is not None:
        # One report only, nothing learned yet: look again once the elapsed time since the
        # task was last seen not started has doubled, to measure the slope.
        base = w.c_t - w.z_t if w.z_t is not None else 0.5 * (now - w.t0)
        step = min(policy.max_interval, max(tau, base))
        return _floor(w, policy, rng, now, min(now + step, hi), jitter=True)
    first = policy.first_poll or _FIRST_POLL
    if w.polls == 0:
        return w.t0 + first
    interval = min(policy.max_interval, first * policy.backoff**w.polls)
    return _floor(w, policy, rng, now, now + interval, jitter=True)


def through(lo: float, hi: float, now: float, step: float) -> float:
    """The next poll when completion lies in ``[lo, hi]``: the window (what is left of it)
    is split into equal steps of at most ``step``, the last one at ``hi``."""
    start = max(lo, now)
    steps = max(1, math.ceil((hi - start) / step - EPS))
    return start + (hi - start) / steps


def _floor(
    w: WatchState,
    policy: PollPolicy,
    rng: random.Random,
    now: float,
    target: float,
    *,
    jitter: bool,
    stretch: bool = True,
) -> float:
    """Apply jitter, ``min_interval`` and, for a task later than predicted (unless
    ``stretch`` is False), a spacing that grows with its lateness."""
    wait = target - now
    if jitter and policy.jitter:
        wait = min(policy.max_interval, wait * (1.0 + policy.jitter * rng.uniform(-1.0, 1.0)))
    if stretch and w.miss_t is not None:
        late = _OVERDUE_FRACTION * (now - w.miss_t)
        wait = max(wait, min(policy.max_interval, late))
    return now + max(wait, policy.min_interval)


def learn(
    w: WatchState, learned: Learned, done_at: float, announced: float | None = None
) -> None:
    """Record the duration of a task that just succeeded at ``done_at``, for the next tasks of
    its model. ``announced``: when a wake-up (a webhook) announced it, if the poll that found
    it done was sent after that."""
    hi = done_at - w.t0
    lo = 0.0 if w.last_t is None else w.last_t - w.t0
    if announced is not None:
        hi = min(hi, announced - w.t0)
        lo = min(hi, max(lo, _ANNOUNCED_LO * hi))
    elif w.push and lo < 0.5 * hi:
        return  # found by its safety net long after its lost webhook: only an upper bound
    if hi <= 0:
        return
    # It finished between the last two polls; a first poll that already found it done only
    # bounds it from above: assume it took at least a quarter of that, so the estimate can
    # still move down.
    if lo < hi * 0.25:
        lo = hi * 0.25
    duration = math.sqrt(lo * hi)
    learned.durations.add(math.log(duration), done_at)
    if w.estimate is not None:
        # Judging an estimate needs precise durations: weigh each by how tightly the polls
        # bracketed it (half weight for +-2.5%), and discount that imprecision (uniform
        # between the two polls, on a log scale) from the estimate's spread.
        width = math.log(hi / lo)
        noise = width * width / 12.0
        weight = 1.0 / (1.0 + (width / 0.05) ** 2)
        learned.estimates.add(math.log(duration / w.estimate), done_at, weight, noise)
        learned.estimated.add(math.log(duration), done_at, weight, noise)


# -- tasks whose completion a webhook should announce -------------------------------------------


@functools.lru_cache(maxsize=8)
def _normal_quantile(q: float) -> float:
    return statistics.NormalDist().inv_cdf(q)


def push_safety(w: WatchState, learned: Learned, policy: PollPolicy) -> float:
    """Seconds after submission of the safety poll of a task that expects a webhook: the
    ``push_safety_quantile`` of the durations believed for it (learned for its model, or from
    its ``estimated_time``), or ``push_fallback_delay`` while nothing is known."""
    belief = learned.belief(w.estimate)
    if belief is None:
        return policy.push_fallback_delay
    mu, sigma = belief
    return math.exp(mu + _normal_quantile(policy.push_safety_quantile) * sigma)


def push_poll(
    w: WatchState, learned: Learned, policy: PollPolicy, now: float, rng: random.Random
) -> float:
    """When to poll a task that expects a webhook, if no webhook comes (clock time).

    Polling is its safety net, not its way of noticing the completion: one poll at the late
    tail of its believed duration (:func:`push_safety`; jittered only later, so that it is
    never repeated because a jitter put it early), then polls every quarter of its age, at
    most ``push_max_interval`` apart (jittered). Progress is not tracked: it would spend the
    requests the webhook saves.
    """
    safety = w.t0 + push_safety(w, learned, policy)
    if now < safety:
        wait = safety - now
        if policy.jitter:
            wait *= 1.0 + policy.jitter * rng.random()
    else:
        wait = min(policy.push_max_interval, _PUSH_AGE_FRACTION * (now - w.t0))
        if policy.jitter:
            wait *= 1.0 + policy.jitter * rng.uniform(-1.0, 1.0)
        wait = min(policy.push_max_interval, wait)
    return now + max(wait, policy.min_interval)


def wake_poll(w: WatchState, policy: PollPolicy, now: float) -> float:
    """Where a wake-up puts the task's next poll: now, or ``min_interval`` after its latest
    answer if that was more recent (a flood of wake-ups costs at most one poll per
    ``min_interval``)."""
    last = w.last_t
    if last is None:
        return now
    return max(now, last + policy.min_interval)


def follow_up(start: float, policy: PollPolicy, now: float) -> float:
    """The poll after one that was in flight when a wake-up came and found the task still
    running (it may have been answered before the announced completion): ``min_interval``
    after that poll was sent, or now."""
    return max(now, start + policy.min_interval)
