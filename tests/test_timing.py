"""The timing model as plain functions: no event loop, no clock, no scheduler.

Every time here is a number handed in; every random draw comes from a seeded ``Random``. These
pin the decisions the driver delegates (the first poll, the backoff, the progress window, the
learned distribution, the lateness stretch); the driver's own tests (test_scheduler.py) check
that it follows them over a whole run in virtual time.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux_async.errors import ConfigurationError
from flux_async.models import TaskState, TaskStatus
from flux_async.scheduler import PollPolicy
from flux_async.scheduler._learned import fit, refit
from flux_async.scheduler._timing import (
    Learned,
    WatchState,
    belief_step,
    follow_up,
    learn,
    next_poll,
    observe,
    push_poll,
    push_safety,
    spacing,
    through,
    wake_poll,
    window,
)
from flux_async.scheduler._wakes import RecentIds

STILL = PollPolicy(jitter=0.0)


def running(progress: float | None = None, estimated_time: float | None = None) -> TaskState:
    return TaskState(
        task_id="t",
        status=TaskStatus.RUNNING,
        raw_status="running",
        progress=progress,
        estimated_time=estimated_time,
    )


def polled(w: WatchState, state: TaskState, t: float) -> WatchState:
    """What the driver does with an answer: count the poll, then observe it."""
    w.polls += 1
    observe(w, state, t)
    return w


def learned_exactly(duration: float, count: int = 20, *, estimate: float | None = None) -> Learned:
    """A model fed ``count`` completions of ``duration`` seconds, each bracketed to ±1%."""
    model = Learned()
    for i in range(count):
        t0 = 100.0 * i
        w = WatchState(t0)
        w.estimate = estimate
        w.last_t = t0 + 0.99 * duration
        learn(w, model, t0 + 1.01 * duration)
    return model


def test_nothing_known_first_poll_after_a_second_then_a_geometric_backoff() -> None:
    w = WatchState(50.0)
    rng = random.Random(0)
    assert next_poll(w, Learned(), STILL, 50.0, rng) == 51.0
    waits = []
    for n in range(1, 8):
        w.polls = n
        waits.append(next_poll(w, Learned(), STILL, 60.0, rng) - 60.0)
    assert waits[:5] == pytest.approx([1.5, 2.25, 3.375, 5.0625, 7.59375])
    assert waits[5:] == [STILL.max_interval, STILL.max_interval]  # capped


def test_an_explicit_first_poll_wins_over_everything() -> None:
    policy = PollPolicy(first_poll=0.3)
    w = WatchState(10.0)
    observe(w, running(50.0, estimated_time=40.0), 10.0)
    assert next_poll(w, learned_exactly(5.0), policy, 10.0, random.Random(0)) == 10.3
    # Already past it (a slow submit answer): poll at once.
    assert next_poll(WatchState(10.0), Learned(), policy, 12.0, random.Random(0)) == 12.0


def test_jitter_stays_within_its_bounds_and_comes_only_from_the_rng() -> None:
    policy = PollPolicy(jitter=0.2)
    w = WatchState(0.0)
    w.polls = 2  # nominal wait 2.25 s
    dues = [next_poll(w, Learned(), policy, 0.0, random.Random(seed)) for seed in range(200)]
    assert all(2.25 * 0.8 - 1e-9 <= due <= 2.25 * 1.2 + 1e-9 for due in dues)
    assert len(set(dues)) > 100  # the draws do spread the tasks out
    again = [next_poll(w, Learned(), policy, 0.0, random.Random(seed)) for seed in range(200)]
    assert again == dues  # nothing else (no clock) moves the answer


def test_two_progress_reports_pin_the_completion_and_the_poll_falls_inside_the_window() -> None:
    w = WatchState(0.0)
    polled(w, running(0.0), 1.0)  # queued until at least t=1
    polled(w, running(20.0), 3.0)
    assert next_poll(w, Learned(), STILL, 3.0, random.Random(0)) == 5.0  # one report: measure the slope
    polled(w, running(40.0), 5.0)
    lo, hi = window(w)
    assert 10.0 < lo < hi < 11.5  # about 10 s at 10 %/s, with the percents' rounding
    due = next_poll(w, Learned(), STILL, 5.0, random.Random(0))
    assert lo <= due <= hi
    assert due - lo <= STILL.target_delay + 1e-9  # the window is stepped target_delay apart
    assert w.w_hi == hi  # remembered: a task still running after it is late


def test_a_completion_far_ahead_is_checked_on_the_way() -> None:
    w = WatchState(0.0)
    polled(w, running(1.0), 1.0)
    polled(w, running(2.0), 3.0)
    lo, _ = window(w)
    due = next_poll(w, Learned(), STILL, 3.0, random.Random(0))
    assert lo - 3.0 > STILL.max_interval
    assert due == pytest.approx(3.0 + 0.75 * (lo - 3.0))


def test_progress_that_goes_backwards_restarts_the_slope() -> None:
    w = WatchState(0.0)
    polled(w, running(30.0), 2.0)
    polled(w, running(60.0), 4.0)
    polled(w, running(10.0), 6.0)  # the job restarted
    assert (w.a_t, w.a_p, w.c_t, w.c_p) == (6.0, 10.0, 6.0, 10.0)
    assert window(w)[1] == math.inf  # one report since the restart: no end known yet


def test_learned_durations_give_the_median_and_place_the_first_poll_before_it() -> None:
    model = learned_exactly(10.0)
    belief = model.belief(None)
    assert belief is not None
    mu, sigma = belief
    assert math.exp(mu) == pytest.approx(10.0, rel=0.01)
    assert sigma < 0.2  # twenty equal durations: a narrow spread, shrunk from the 0.5 prior
    w = WatchState(0.0)
    w.polls = 1
    first = next_poll(w, model, STILL, 0.0, random.Random(0))
    assert 5.0 < first < 10.0  # a low quantile, not the median
    # Near the median, polls come about 2 * target_delay apart.
    near = next_poll(w, model, STILL, 9.0, random.Random(0)) - 9.0
    assert STILL.min_interval <= near <= 2 * STILL.target_delay + 0.05


def test_fewer_than_three_completions_teach_nothing() -> None:
    assert learned_exactly(10.0, count=2).belief(None) is None
    assert learned_exactly(10.0, count=3).belief(None) is not None


def test_a_trusted_estimated_time_becomes_a_window() -> None:
    # Durations spread widely, but each was exactly its estimate: the estimate is trusted.
    model = Learned()
    for i, duration in enumerate([4.0, 8.0, 16.0, 32.0, 6.0, 12.0, 24.0, 5.0] * 2):
        w = WatchState(100.0 * i)
        w.estimate = duration
        w.last_t = w.t0 + 0.999 * duration
        learn(w, model, w.t0 + 1.001 * duration)
    belief = model.belief(2.0)
    assert belief is not None
    mu, sigma = belief
    assert math.exp(mu) == pytest.approx(2.0, rel=0.01)  # the estimate, not the durations' median
    w = WatchState(0.0)
    polled(w, running(estimated_time=2.0), 0.5)
    due = next_poll(w, model, STILL, 0.5, random.Random(0))
    assert w.w_hi == pytest.approx(math.exp(mu + 2 * sigma))  # the window ends past the estimate
    assert math.exp(mu - 2 * sigma) < due < 2.0  # and is stepped through from its start
    # The same task without the estimate waits for the (wide) learned distribution instead:
    # its first poll comes at a low quantile of the durations, not inside the estimate's window.
    plain = WatchState(0.0)
    polled(plain, running(), 0.5)
    learned = model.belief(None)
    assert learned is not None
    assert next_poll(plain, model, STILL, 0.5, random.Random(0)) >= min(
        2.0, math.exp(learned[0] - 2.6 * learned[1])
    )
    assert plain.w_hi == math.inf


def test_a_task_later_than_its_window_is_polled_ever_more_sparsely() -> None:
    w = WatchState(0.0)
    polled(w, running(0.0), 1.0)
    polled(w, running(40.0), 3.0)
    polled(w, running(80.0), 5.0)
    _, hi = window(w)
    next_poll(w, Learned(), STILL, 5.0, random.Random(0))
    polled(w, running(80.0), hi + 1.0)  # stuck: still 80 % after the predicted end
    assert w.miss_t == hi
    waits = []
    for late in (4.0, 12.0, 40.0):
        now = hi + late
        w.last_t = now
        waits.append(next_poll(w, Learned(), STILL, now, random.Random(0)) - now)
    assert waits == sorted(waits)
    assert waits[1] >= 0.25 * 12.0 - 1e-9
    assert waits[2] == STILL.max_interval


def test_through_splits_what_is_left_of_a_window_into_equal_steps() -> None:
    assert through(10.0, 11.0, 5.0, 0.5) == 10.5
    assert through(10.0, 11.0, 10.8, 0.5) == pytest.approx(11.0)
    assert through(10.0, 10.2, 5.0, 0.5) == 10.2  # narrower than a step: poll at its end


def test_learn_ignores_a_duration_that_is_not_positive() -> None:
    model = Learned()
    learn(WatchState(10.0), model, 10.0)
    assert model.durations.n == 0


@given(
    reports=st.lists(
        st.tuples(
            st.floats(min_value=0.01, max_value=30.0),
            st.one_of(st.none(), st.floats(min_value=-5.0, max_value=120.0)),
            st.one_of(st.none(), st.floats(min_value=0.1, max_value=300.0)),
        ),
        max_size=12,
    ),
    learned=st.sampled_from([None, 3.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_after_a_poll_the_next_is_never_sooner_than_min_interval(
    reports: list[tuple[float, float | None, float | None]], learned: float | None, seed: int
) -> None:
    """Whatever the reports (progress out of range, estimates, restarts), once a task has been
    polled its next poll is a finite time at least ``min_interval`` away."""
    policy = PollPolicy()
    model = Learned() if learned is None else learned_exactly(learned)
    rng = random.Random(seed)
    w = WatchState(0.0)
    now = 0.0
    for gap, progress, estimate in reports:
        now += gap
        polled(w, running(progress, estimate), now)
        due = next_poll(w, model, policy, now, rng)
        assert math.isfinite(due)
        assert due >= now + policy.min_interval - 1e-9


# -- no progress: the two-level schedule and the learned distribution of a batch -------------------


def test_without_progress_polls_are_sparse_then_1_5_then_0_6_target_delays_apart() -> None:
    mu, sigma, tau = math.log(10.0), 0.35, 0.5
    at = lambda z: math.exp(mu + z * sigma)  # noqa: E731 - the duration at a standard score
    assert spacing(at(-3.5), mu, sigma, tau) > 2 * tau  # completions rare: requests saved here
    assert spacing(at(-2.0), mu, sigma, tau) == pytest.approx(1.5 * tau)
    assert spacing(at(-0.5), mu, sigma, tau) == pytest.approx(1.5 * tau)
    # Where most completions fall, closer than the target delay: a median delay near tau / 2.
    for z in (-0.2, 0.0, 1.0, 2.5):
        assert spacing(at(z), mu, sigma, tau) == pytest.approx(0.6 * tau)
    # The first poll lands at a low quantile of the distribution, not at 1 s nor at the median.
    first = belief_step(0.0, mu, sigma, tau, 0.2)
    assert at(-3.5) < first < at(-2.0)


def test_the_delay_of_a_completion_is_bounded_once_completions_are_likely() -> None:
    """Whenever a task of a learned model is past the distribution's 0.5% quantile, its next
    poll comes within 1.5 target delays: the tail of the detection delay is bounded."""
    model = learned_exactly(10.0)
    mu, sigma = model.belief(None) or (0.0, 0.0)
    w = WatchState(0.0)
    w.polls = 1
    now = math.exp(mu - 2.5 * sigma)
    while now < math.exp(mu + 3.0 * sigma):
        w.last_t = now
        due = next_poll(w, model, STILL, now, random.Random(0))
        assert due - now <= 1.5 * STILL.target_delay + 1e-9
        now = due


class _Task:
    """A running task as the learned model sees it."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.live = False


def test_a_batch_is_learned_from_its_running_tasks_too() -> None:
    """A batch finishes in order of duration: six seconds in, only its quickest jobs are done.
    Fitted to them alone, the median would be about 5 s; counting the 85% still running as
    "longer than six seconds" recovers the true 10 s and its spread."""
    rng = random.Random(4)
    durations = [10.0 * math.exp(rng.gauss(0.0, 0.35)) for _ in range(2000)]
    model = Learned()
    now = 6.0
    for d in durations:
        task = _Task(0.0)
        model.enrol(task)
        if d < now:
            w = WatchState(0.0)
            w.last_t = d * 0.99
            learn(w, model, d * 1.01)
            model.retire(task)
    done = model.durations
    assert 100 < done.n < 400
    assert math.exp(done.mean) < 6.0  # the quickest jobs only
    assert model.stale(now)
    assert refit(model, now)  # the model's first belief
    assert not model.stale(now)  # and not again at once
    belief = model.belief(None)
    assert belief is not None
    for _ in range(30):  # later refits start from the last fit and go on converging
        model.fit_t = -math.inf
        refit(model, now)
        belief = model.belief(None)
        assert belief is not None
    mu, sigma = belief
    assert math.exp(mu) == pytest.approx(10.0, rel=0.1)
    assert 0.25 < sigma < 0.45


def test_running_tasks_are_sampled_evenly_and_swept() -> None:
    model = Learned()
    tasks = [_Task(float(i)) for i in range(1000)]
    for task in tasks:
        model.enrol(task)
    ages, weight = model.sample(1000.0)
    assert 40 <= len(ages) <= 60
    assert weight * len(ages) == pytest.approx(1000)
    assert min(ages) < 50  # spread over the whole running set
    assert max(ages) > 950
    for task in tasks[:900]:
        model.retire(task)
    model.retire(tasks[0])  # twice: counted once
    assert model.alive == 100
    assert len(model.running) < 1000  # swept once most of it had ended
    ages, weight = model.sample(1000.0)
    assert weight * len(ages) == pytest.approx(100)
    assert all(age <= 100 for age in ages)


def test_a_refit_waits_for_news() -> None:
    model = learned_exactly(10.0, count=2)
    assert not model.stale(1000.0)  # two completions alone teach nothing yet
    for _ in range(3):
        model.enrol(_Task(990.0))
    # ... but with others still running (each "longer than 10 s") they do.
    assert model.stale(1000.0)
    refit(model, 1000.0)
    assert model.belief(None) is not None
    model = learned_exactly(10.0, count=4)
    now = 2000.0
    assert model.stale(now)
    refit(model, now)
    assert not model.stale(now + 0.5)  # nothing new: the running set aged 5% of the median
    assert model.stale(now + 1.0)  # it aged 10% of the median
    refit(model, now + 1.0)
    w = WatchState(0.0)
    w.last_t = 9.9
    learn(w, model, 10.1)  # a fifth completion: 25% more
    assert model.stale(now + 1.3)


@given(
    elapsed=st.floats(min_value=0.0, max_value=60.0),
    median=st.floats(min_value=0.5, max_value=30.0),
    sigma=st.floats(min_value=0.05, max_value=1.0),
)
def test_a_belief_step_is_the_first_time_the_spacing_allows(
    elapsed: float, median: float, sigma: float
) -> None:
    """Whatever the distribution: the step is allowed by the spacing a step later, and (to the
    search's precision) no shorter step is."""
    mu, tau, min_step = math.log(median), 0.5, 0.2
    step = belief_step(elapsed, mu, sigma, tau, min_step)
    start = max(elapsed, 1e-3)
    if start <= math.exp(mu + 3.0 * sigma):  # not stretched for lateness
        assert step >= min(spacing(start + step, mu, sigma, tau), step) - 1e-9
        shorter = step * 0.98
        if shorter > min_step:
            assert shorter < spacing(start + shorter, mu, sigma, tau)


@given(
    count=st.floats(min_value=1e-6, max_value=1e4),
    mean=st.floats(min_value=-3.0, max_value=6.0),
    ages=st.lists(st.floats(min_value=0.01, max_value=1e4), max_size=48),
    weight=st.floats(min_value=0.0, max_value=1e4),
)
def test_the_fit_is_finite_and_never_below_what_finished(
    count: float, mean: float, ages: list[float], weight: float
) -> None:
    """Whatever mix of finished and running tasks (a long-forgotten model and a thousand jobs
    running, say): a finite belief, whose median is never below the finished ones' (a running
    task can only say "longer")."""
    censored = [math.log(a) for a in ages]
    mu, sigma = fit(count, mean, 0.04, censored, weight, (mean, 0.3))
    assert math.isfinite(mu)
    assert math.isfinite(sigma)
    assert sigma > 0
    assert mu >= mean - 1e-6


# -- tasks whose completion a webhook should announce ----------------------------------------------


def pushed(t0: float) -> WatchState:
    w = WatchState(t0)
    w.push = True
    return w


@pytest.mark.parametrize(
    "kwargs",
    [
        {"push_safety_quantile": 0.0},
        {"push_safety_quantile": 1.0},
        {"push_safety_quantile": math.nan},
        {"push_fallback_delay": 0.0},
        {"push_fallback_delay": math.inf},
        {"push_max_interval": -1.0},
        {"push_max_interval": 0.1, "min_interval": 0.2},
    ],
)
def test_push_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError, match=r"PollPolicy\.(push_|min_interval)"):
        PollPolicy(**kwargs)  # type: ignore[arg-type]


def test_push_safety_poll_is_the_fallback_while_nothing_is_known() -> None:
    policy = PollPolicy(jitter=0.0, push_fallback_delay=45.0)
    assert push_safety(pushed(0.0), Learned(), policy) == 45.0
    assert push_poll(pushed(100.0), Learned(), policy, 100.0, random.Random(0)) == 145.0


def test_push_safety_poll_is_the_learned_late_tail() -> None:
    model = learned_exactly(10.0)
    belief = model.belief(None)
    assert belief is not None
    mu, sigma = belief
    p99 = math.exp(mu + 2.3263 * sigma)
    assert push_safety(pushed(0.0), model, STILL) == pytest.approx(p99, rel=1e-4)
    assert 10.0 < p99 < 20.0  # past nearly every learned duration, not the generous fallback
    lower = push_safety(pushed(0.0), model, PollPolicy(push_safety_quantile=0.9))
    assert 10.0 < lower < p99  # the quantile is the knob


def test_push_safety_poll_uses_an_estimated_time_when_nothing_is_learned() -> None:
    w = pushed(0.0)
    w.estimate = 8.0
    # Only the estimate: believed log-normal around it with the prior spread (0.5).
    assert push_safety(w, Learned(), STILL) == pytest.approx(8.0 * math.exp(2.3263 * 0.5), rel=1e-4)


def test_a_push_task_ignores_first_poll_and_progress() -> None:
    policy = PollPolicy(jitter=0.0, first_poll=0.3)
    w = pushed(0.0)
    assert next_poll(w, Learned(), policy, 0.0, random.Random(0)) == policy.push_fallback_delay
    polled(w, running(10.0), 1.0)
    polled(w, running(50.0), 5.0)  # progress pins the completion near 10 s: not followed
    assert next_poll(w, Learned(), policy, 5.0, random.Random(0)) == policy.push_fallback_delay


def test_after_the_safety_poll_a_push_task_is_polled_every_quarter_of_its_age() -> None:
    policy = PollPolicy(jitter=0.0, push_fallback_delay=20.0, push_max_interval=30.0)
    w = pushed(0.0)
    assert push_poll(w, Learned(), policy, 20.0, random.Random(0)) == 25.0
    assert push_poll(w, Learned(), policy, 40.0, random.Random(0)) == 50.0
    assert push_poll(w, Learned(), policy, 400.0, random.Random(0)) == 430.0  # capped
    # A result whose webhook was lost is late by at most a quarter of its age (or the cap), for
    # a number of polls that grows with the log of the duration.
    t, polls = 20.0, 1
    while t < 1000.0:
        t = push_poll(w, Learned(), policy, t, random.Random(0))
        polls += 1
    assert polls < 1 + 10 + 1000 / 30


def test_a_wake_before_the_safety_poll_is_followed_by_the_safety_poll_again() -> None:
    policy = PollPolicy(jitter=0.0, push_fallback_delay=20.0)
    w = pushed(0.0)
    polled(w, running(), 3.0)  # a wake-up's poll that found it running (forged, or early)
    assert push_poll(w, Learned(), policy, 3.0, random.Random(0)) == 20.0


@given(seed=st.integers(0, 2**32 - 1), now=st.floats(0.0, 200.0))
def test_push_jitter_never_brings_the_safety_poll_early(seed: int, now: float) -> None:
    policy = PollPolicy(jitter=0.3, push_fallback_delay=60.0, push_max_interval=20.0)
    due = push_poll(pushed(0.0), Learned(), policy, now, random.Random(seed))
    if now < 60.0:
        assert 60.0 <= due <= max(now + policy.min_interval, 60.0 + 0.3 * (60.0 - now)) + 1e-9
    else:
        assert now + policy.min_interval <= due <= now + policy.push_max_interval + 1e-9


def test_a_wake_polls_now_or_min_interval_after_the_latest_answer() -> None:
    policy = PollPolicy(min_interval=0.5)
    w = WatchState(0.0)
    assert wake_poll(w, policy, 3.0) == 3.0  # never polled
    polled(w, running(), 10.0)
    assert wake_poll(w, policy, 10.2) == 10.5
    assert wake_poll(w, policy, 12.0) == 12.0
    assert follow_up(9.8, policy, 10.1) == pytest.approx(10.3)
    assert follow_up(9.0, policy, 10.1) == 10.1


def test_a_completion_announced_by_a_wake_is_learned_at_its_announcement() -> None:
    # Never polled before: a poll alone only says "done within 30.2 s" and is learned as about
    # half of that; the announcement at 30 s says "done just before 30 s".
    plain, announced = Learned(), Learned()
    learn(WatchState(0.0), plain, 30.2)
    learn(pushed(0.0), announced, 30.2, 30.0)
    assert math.exp(plain.durations.mean) == pytest.approx(15.1)
    assert 27.0 <= math.exp(announced.durations.mean) <= 30.0
    # An announcement before the submission (a forged event) teaches nothing.
    nothing = Learned()
    learn(pushed(10.0), nothing, 10.5, 9.0)
    assert nothing.durations.n == 0


def test_a_push_task_found_by_its_safety_net_teaches_only_a_tight_bracket() -> None:
    # Its webhook was lost: done at some time before the safety poll, perhaps long before.
    model = Learned()
    learn(pushed(0.0), model, 60.0)
    w = pushed(0.0)
    polled(w, running(), 3.0)  # seen running early (a forged wake's poll): still too loose
    learn(w, model, 60.0)
    assert model.durations.n == 0
    w = pushed(0.0)
    polled(w, running(), 40.0)  # seen running at 40 s, done at 50 s: that is a duration
    learn(w, model, 50.0)
    assert math.exp(model.durations.mean) == pytest.approx(math.sqrt(40.0 * 50.0))


def test_recent_event_ids_are_bounded_and_deduplicated() -> None:
    ids = RecentIds(3)
    assert [ids.add(k) for k in ("a", "b", "a", "c", "d")] == [True, True, False, True, True]
    assert len(ids) == 3
    assert ids.add("b") is True  # the oldest was forgotten ("a" was seen again after it)
    assert ids.add("d") is False  # remembered now: c, d, b
    for i in range(10_000):
        ids.add(f"forged-{i}")
    assert len(ids) == 3


def test_the_drivers_record_starts_a_task_exactly_as_the_timing_state_does() -> None:
    # Watch writes WatchState's start out instead of calling it: a slot added to one and not
    # the other, or started differently, shows here.
    from flux_async.models import TaskRef
    from flux_async.scheduler._learned import Learned
    from flux_async.scheduler._records import ProviderQueue, Watch

    rec = Watch(TaskRef(provider="toapis", task_id="t"), lambda _: None, 1, ProviderQueue(), Learned(), 12.5, None)
    plain = WatchState(12.5)
    assert {name: getattr(rec, name) for name in WatchState.__slots__} == {
        name: getattr(plain, name) for name in WatchState.__slots__
    }
