"""What the scheduler learns per provider and model: the distribution of completion times.

It owns the running estimate (:class:`LogStats`, time-decayed, O(1) memory), the record of one
(provider, model) (:class:`Learned`: durations, the calibration of ``estimated_time``, and the
tasks still running) and the fit that turns them into a belief (:func:`refit`). The fit counts
the tasks still running as well as the finished ones: a batch submitted together finishes in
order of duration, so its first completions are its shortest jobs, and a fit to completions
alone would expect every job to be as quick as they were. A running task says "longer than my
age", and the fit uses exactly that (a right-censored log-normal maximum likelihood).

Pure: no I/O, no clock, no event loop; every time is handed in. It must not import anyio,
asyncio, aiohttp, the driver, the transport, the session or the codecs (``_timing`` reads it;
the driver feeds it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

__all__ = ["Learned", "LogStats", "refit"]

# The learned distribution is used from this many completions on (from the first one when at
# least as many other tasks are still running: they tell how long the rest take), with this prior
# on its spread.
MIN_SAMPLES = 3
_PRIOR_WEIGHT = 2.0
PRIOR_SIGMA = 0.5
_MIN_SIGMA = 0.03
# Forgetting: a completion weighs e^-1 after this many seconds.
_MEMORY = 1800.0
# A calibrated estimated_time replaces the learned distribution when it leaves this fraction of
# the durations' spread unexplained, or less.
_BETTER = 0.7
# Refit when the completions grew by this fraction, or the running tasks aged by this fraction
# of the median (at most one refit per _REFIT_MIN seconds: a refit costs about a millisecond).
_REFIT_GROWTH = 0.25
_REFIT_AGE = 0.1
_REFIT_MIN = 0.25
# Running tasks looked at per refit (a stride sample, each standing for its share of the rest).
SAMPLE = 48
_FIT_ROUNDS = 4
_NEWTON_STEPS = 6
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class LogStats:
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
        if now > self.t:
            if self.n:
                old *= math.exp((self.t - now) / _MEMORY)
            self.t = now
        self.n += 1
        total = old + weight
        mean = self.mean
        d = x - mean
        mean += weight * d / total
        self.mean = mean
        self.var = (old * self.var + weight * d * (x - mean)) / total
        self.noise += weight * (noise - self.noise) / total
        self.weight = total

    def spread(self) -> float:
        """The variance with the measurement noise taken out (never more than halved)."""
        return max(0.25 * self.var, self.var - self.noise)

    def sigma(self, prior: float) -> float:
        """The spread, shrunk towards ``prior`` while the samples weigh little."""
        var = (self.weight * self.spread() + _PRIOR_WEIGHT * prior * prior) / (
            self.weight + _PRIOR_WEIGHT
        )
        return max(_MIN_SIGMA, math.sqrt(var))


class Running(Protocol):
    """A task as the running set sees it: when it was submitted, and whether it is still
    waited on (the driver clears ``live`` when the watch ends)."""

    t0: float
    live: bool


class Learned:
    """What was learned for one (provider, model): durations, how good estimated_time is, and
    which tasks are still running.

    One is shared by every task of its key; the timing model's ``learn`` feeds the durations,
    :func:`refit` turns them (and the running tasks) into the belief ``next_poll`` reads.
    """

    __slots__ = (
        "alive",
        "durations",
        "estimated",
        "estimates",
        "fit_n",
        "fit_t",
        "fitted",
        "running",
    )

    def __init__(self) -> None:
        self.durations = LogStats()  # log(seconds from submission to completion)
        self.estimates = LogStats()  # log(actual duration / estimated_time)
        self.estimated = LogStats()  # log(duration) of the same tasks, with the same weights
        self.fitted: tuple[float, float] | None = None  # (mu, sigma) of the latest refit
        self.fit_n = 0
        self.fit_t = -math.inf
        self.running: list[Running] = []  # in the order they were enrolled; swept lazily
        self.alive = 0

    # -- the running set ---------------------------------------------------------------------

    def enrol(self, task: Running) -> None:
        """Count ``task`` as running (its ``live`` flag is set here). The driver writes these
        three lines out for each task it watches: a change here goes there too."""
        task.live = True
        self.running.append(task)
        self.alive += 1

    def retire(self, task: Running) -> None:
        """``task`` is no longer waited on (finished, given up or unwatched)."""
        if not task.live:
            return
        task.live = False
        self.alive -= 1
        running = self.running
        if len(running) > 64 and self.alive < len(running) // 2:
            self.running = [t for t in running if t.live]

    def sample(self, now: float) -> tuple[list[float], float]:
        """The ages of at most about :data:`SAMPLE` running tasks, evenly spread over the running
        set, and the number of running tasks each one stands for."""
        running = self.running
        stride = max(1, len(running) // SAMPLE)
        ages = [now - t.t0 for t in running[::stride] if t.live and now > t.t0]
        return ages, (self.alive / len(ages) if ages else 0.0)

    # -- the belief ----------------------------------------------------------------------------

    def stale(self, now: float) -> bool:
        """Whether :func:`refit` has something new to say (cheap: a few comparisons)."""
        n = self.durations.n
        if not n or (n < MIN_SAMPLES and self.alive < MIN_SAMPLES) or now - self.fit_t < _REFIT_MIN:
            return False
        fitted = self.fitted
        if fitted is None or n >= self.fit_n * (1.0 + _REFIT_GROWTH):
            return True
        return now - self.fit_t >= _REFIT_AGE * math.exp(fitted[0])

    def belief(self, estimate: float | None) -> tuple[float, float] | None:
        """(mu, sigma) of the log-duration of a task, or None when nothing is known.

        An ``estimated_time`` is used once it has proven clearly more precise than the spread of
        the durations themselves, or while nothing else is known; it is never combined with the
        learned distribution, because a constant estimate would then be counted twice.
        """
        d = self.durations
        learned = self.fitted
        if learned is None and d.n >= MIN_SAMPLES:
            learned = (d.mean, d.sigma(PRIOR_SIGMA))
        if estimate is None:
            return learned
        e = self.estimates
        if e.weight >= MIN_SAMPLES:
            hinted = (math.log(estimate) + e.mean, e.sigma(PRIOR_SIGMA))
            if learned is None or hinted[1] < _BETTER * self.estimated.sigma(PRIOR_SIGMA):
                return hinted
            return learned
        return learned or (math.log(estimate), PRIOR_SIGMA)


def _hazard_ratio(a: float) -> float:
    """phi(a) / Q(a): the standard normal's hazard (the inverse Mills ratio)."""
    if a > 8.0:
        return a + 1.0 / a
    if a < -8.0:
        return 0.0
    return math.exp(-0.5 * a * a) * _INV_SQRT_2PI / (0.5 * math.erfc(a * _INV_SQRT2))


def fit(
    count: float,
    mean: float,
    var: float,
    censored: Sequence[float],
    weight: float,
    start: tuple[float, float],
) -> tuple[float, float]:
    """The (mu, sigma) of a log-normal fitted to finished durations (``count`` of them, weighted,
    with this ``mean`` and ``var`` of their logs) and to tasks still running at the log-ages
    ``censored`` (each standing for ``weight`` tasks): the maximum of the likelihood, with the
    spread's prior as pseudo-observations, found from ``start`` by alternating a Newton solve
    for mu and an expectation-maximisation step for sigma."""
    mu, s = start
    prior = _PRIOR_WEIGHT * PRIOR_SIGMA * PRIOR_SIGMA
    for _ in range(_FIT_ROUNDS):
        s2 = s * s
        for _ in range(_NEWTON_STEPS):
            # The score in mu: the finished pull towards their mean, each running task pushes
            # it up by its hazard; its derivative is always negative, so Newton is safe.
            g = count * (mean - mu) / s2
            h = -count / s2
            for c in censored:
                a = (c - mu) / s
                lam = _hazard_ratio(a)
                g += weight * lam / s
                h -= weight * lam * (lam - a) / s2
            if h >= 0:
                break
            step = max(-2.0 * s, min(2.0 * s, -g / h))  # at most two spreads per step
            mu += step
            if abs(step) < 1e-4:
                break
        num = count * (var + (mean - mu) ** 2) + prior
        den = count + _PRIOR_WEIGHT
        for c in censored:
            a = (c - mu) / s
            num += weight * s2 * (1.0 + a * _hazard_ratio(a))
            den += weight
        s = max(_MIN_SIGMA, math.sqrt(num / den))
    return mu, s


def refit(learned: Learned, now: float) -> bool:
    """Fit the belief to the durations learned so far and to the tasks still running at
    ``now``; True when this is the key's first belief (tasks planned without one may now be
    due sooner)."""
    d = learned.durations
    if not d.n:
        return False
    first = learned.fitted is None
    count = d.weight * math.exp(min(0.0, d.t - now) / _MEMORY)
    ages, weight = learned.sample(now)
    censored = [math.log(a) for a in ages]
    start = learned.fitted or (d.mean, d.sigma(PRIOR_SIGMA))
    learned.fitted = fit(count, d.mean, d.spread(), censored, weight, start)
    learned.fit_n = d.n
    learned.fit_t = now
    return first
