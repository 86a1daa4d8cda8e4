"""The scheduler's configuration and its counters: :class:`PollPolicy` and
:class:`SchedulerStatistics`, frozen values with no behaviour of their own.

Pure: no I/O, no clock, no event loop; imports only attrs, the errors and the shared checks.
The timing model (``_timing``) reads a policy; the driver (``_driver``) reads it and fills the
statistics.
"""

from __future__ import annotations

import attrs

from .._checks import check_int, check_number, check_seconds
from ..errors import ConfigurationError

__all__ = ["PollPolicy", "SchedulerStatistics"]


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
    - When only the learned distribution of durations is known (no progress reported, as BFL
      often does), the polls stay sparse while completions are rare (before the distribution's
      0.5% quantile; the first poll lands there), then come ``1.5 * target_delay`` apart, and
      ``0.6 * target_delay`` apart from its 38% quantile on, where most completions fall: a
      median delay of about ``0.4 * target_delay`` and almost none over ``1.5 * target_delay``.
      The distribution is learned per provider and model from the tasks that finished *and*
      the ones still running (a batch's first completions are its quickest jobs); its first
      estimate also re-plans the tasks still waiting on the blind backoff.
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

    Tasks watched with ``push=True`` (the provider was asked to announce the completion with a
    webhook, which :meth:`PollScheduler.wake` turns into a poll now) are not tracked closely:
    polling is only their safety net, for a webhook that never arrives. The trade-off is the
    delay a lost webhook costs against the requests spent on tasks whose webhook does arrive:

    - ``push_safety_quantile``: the first poll of such a task comes at this quantile of the
      durations learned for its provider and model (0.99: a lost webhook is noticed within the
      late tail of the durations, and only about one task in a hundred is polled before its
      webhook could have come). A lower quantile notices lost webhooks sooner and polls more
      tasks that were about to announce themselves.
    - ``push_fallback_delay``: seconds after submission of that first poll while nothing is
      learned yet for the model (generous: 60 s, several times the usual image job).
    - ``push_max_interval``: after the first poll, the task is polled every quarter of its age
      (a lost webhook delays its result by at most a quarter of its duration), but never more
      than this many seconds apart.

    ``first_poll`` does not apply to these tasks; ``min_interval``, ``jitter`` (only ever
    later, for the first poll) and the deadline do. They teach the learned durations only what
    they show precisely (a completion a webhook announced, or polls at most a factor of two
    apart around it), and are not counted among the running tasks the fit reads: a lost
    webhook would make a finished task look like a long one.

    A field out of its range (a bool where a number goes, 0 or a negative number of seconds,
    ``min_interval`` above ``max_interval``, NaN or infinity) is a ConfigurationError naming
    ``PollPolicy.<field>``.
    """

    target_delay: float = 0.5
    first_poll: float | None = None
    min_interval: float = 0.2
    max_interval: float = 10.0
    backoff: float = 1.5
    jitter: float = 0.1
    quantum: float = 0.02
    max_in_flight: int = 32
    max_polls_per_second: float | None = None
    max_poll_errors: int = 5
    rate_limit_pause_cap: float = 60.0
    push_safety_quantile: float = 0.99
    push_fallback_delay: float = 60.0
    push_max_interval: float = 60.0

    def __attrs_post_init__(self) -> None:
        for name in ("target_delay", "min_interval", "max_interval", "rate_limit_pause_cap"):
            check_seconds(_OWNER, name, getattr(self, name))
        if self.first_poll is not None:
            check_seconds(_OWNER, "first_poll", self.first_poll)
        if self.min_interval > self.max_interval:
            raise ConfigurationError(
                f"PollPolicy.min_interval ({self.min_interval!r}) must be at most "
                f"max_interval ({self.max_interval!r})"
            )
        check_number(_OWNER, "backoff", self.backoff, least=1)
        check_number(_OWNER, "jitter", self.jitter, below=1)
        check_number(_OWNER, "quantum", self.quantum)
        check_int(_OWNER, "max_in_flight", self.max_in_flight, 1)
        if self.max_polls_per_second is not None:
            check_number(_OWNER, "max_polls_per_second", self.max_polls_per_second, above=True)
        check_int(_OWNER, "max_poll_errors", self.max_poll_errors, 1)
        quantile = self.push_safety_quantile
        check_number(_OWNER, "push_safety_quantile", quantile, above=True, below=1)
        for name in ("push_fallback_delay", "push_max_interval"):
            check_seconds(_OWNER, name, getattr(self, name))
        if self.min_interval > self.push_max_interval:
            raise ConfigurationError(
                f"PollPolicy.min_interval ({self.min_interval!r}) must be at most "
                f"push_max_interval ({self.push_max_interval!r})"
            )


_OWNER = "PollPolicy"


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

    ``wakes_received`` counts the calls of :meth:`PollScheduler.wake`; ``wakes_moved`` those that
    brought a task's poll forward, ``wakes_ignored`` the others: an unknown task, an event id
    already seen, a wake already pending for the task, a poll already due as soon, or a poll in
    flight (which answers it; see :meth:`PollScheduler.wake`). The two add up to the first.
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
    wakes_received: int = 0
    wakes_moved: int = 0
    wakes_ignored: int = 0
