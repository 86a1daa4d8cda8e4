"""How fast a session may send: the pause after a rate limit, the adaptive submit rate, the
optional hard cap, and the outage breaker.

Everything here is plain state changed by plain methods that take the time as an argument:
no clock reads, no sleeping, no I/O. The money path asks :meth:`Throttle.submit_delay` before
each POST and waits what it says; a 429 on a poll is reported here too (the scheduler pauses
the polls themselves, within ``PollPolicy.rate_limit_pause_cap``). It must not import the
session, the scheduler, the transport or aiohttp.

**Rate limits (429).** One 429, on a submit or a poll, pauses every submit of the session
until the provider's ``Retry-After`` (floored at the retry policy's backoff when it is 0,
negative or garbage: the caller passes the delay it computed), and cuts the submit rate
multiplicatively: to half the rate submits were actually being sent at (measured over the last
second or so), never below :data:`MIN_RATE`, and once per round: a 429 for a submit sent
before the last cut says nothing about the rate since (for polls, once a second). Every submit that is accepted
raises the rate additively (:data:`RECOVERY` submits per second, per second), so a session
that was slowed by a burst climbs back; once the rate is twice what was being sent when the
first 429 came, the adaptive limit is dropped. ``Limits.max_submits_per_second`` is a hard cap on top.

**Outages.** A streak of submits that failed with server errors, transport errors or in doubt
(``Limits.outage_streak`` of them in a row; any accepted submit, or a refusal that shows the
provider is up, resets it) opens the breaker: submits are refused with ``OutageError``,
nothing sent, for ``Limits.outage_pause`` seconds; then one submit at a time is let through
to probe the provider, and its success closes the breaker.
"""

from __future__ import annotations

import math

__all__ = ["MIN_RATE", "RECOVERY", "Breaker", "Throttle"]

#: The adaptive submit rate never goes below this many submits per second.
MIN_RATE = 0.2
#: Submits per second the adaptive rate regains per second without a 429.
RECOVERY = 1.0
#: Past this multiple of the send rate measured at the first cut, the adaptive limit is dropped.
_SLACK = 2.0


class Throttle:
    """Session-wide pacing after rate limits (see the module docstring)."""

    __slots__ = (
        "_bucket_start",
        "_ceiling",
        "_count_now",
        "_count_prev",
        "_cut_at",
        "_cut_until",
        "_last_raise",
        "_next_slot",
        "cap",
        "limited",
        "paused_until",
        "rate",
    )

    def __init__(self, *, cap: float | None = None) -> None:
        #: ``Limits.max_submits_per_second``: a hard cap, whatever the provider says.
        self.cap = cap
        #: The adaptive limit on submits per second; None until a 429 asks for one.
        self.rate: float | None = None
        #: No submit of the session starts before this time (set by a 429).
        self.paused_until = -math.inf
        #: True while a limit (pause or rate) may bind: the cheap test on the hot path.
        self.limited = cap is not None
        self._next_slot = -math.inf
        self._cut_until = -math.inf
        self._cut_at = -math.inf
        self._last_raise = -math.inf
        self._bucket_start = -math.inf
        self._ceiling = math.inf
        self._count_now = 0
        self._count_prev = 0

    # -- what the senders ask ------------------------------------------------------------------

    def submit_delay(self, now: float, *, reserve: bool = True) -> float:
        """Seconds the next submit must wait. With ``reserve`` the submit is counted as sent at
        that time (its slot is taken: send after waiting what it says); without, it is only
        asked."""
        start = now
        if self.limited:
            start = max(now, self.paused_until)
            rate = self._effective_rate()
            if rate is not None:
                start = max(start, self._next_slot)
                if reserve:
                    self._next_slot = start + 1.0 / rate
            elif self.paused_until <= now and reserve:
                self.limited = False
        if reserve:
            self.count(start)
        return start - now

    # -- what the answers say ------------------------------------------------------------------

    def rate_limited(self, now: float, delay: float, *, sent_at: float | None = None) -> None:
        """A 429 came back: pause for ``delay`` seconds, and cut the submit rate. ``sent_at``
        is when the refused submit was sent (None for a poll): a submit sent before the last
        cut, or a poll within a second of it, does not cut again."""
        self.paused_until = max(self.paused_until, now + delay)
        self.limited = True
        if sent_at is None:
            if now < self._cut_until:
                return
        elif sent_at < self._cut_at:
            return
        measured = self._measured(now)
        if sent_at is None and self.rate is None and measured <= 0.0:
            return  # polls alone are limited and no submit is being sent: nothing to cut
        if self.rate is None:
            self._ceiling = max(measured, MIN_RATE)
        base = measured if self.rate is None else min(self.rate, max(measured, MIN_RATE))
        self.rate = max(MIN_RATE, base / 2.0)
        self._cut_at = now
        self._cut_until = now + max(delay, 1.0)
        self._last_raise = now

    def accepted(self, now: float) -> None:
        """A submit was accepted: the adaptive rate recovers additively."""
        rate = self.rate
        if rate is None:
            return
        elapsed = now - self._last_raise
        if elapsed <= 0.0:
            return
        self._last_raise = now
        rate += RECOVERY * elapsed
        if rate >= _SLACK * self._ceiling and now >= self.paused_until:
            self.rate = None  # well past where the trouble began: no limit any more
            self.limited = self.cap is not None
        else:
            self.rate = rate

    # -- internals -----------------------------------------------------------------------------

    def _effective_rate(self) -> float | None:
        rate, cap = self.rate, self.cap
        if rate is None:
            return cap
        return rate if cap is None else min(rate, cap)

    def count(self, at: float) -> None:
        """One submit sent at ``at`` (what :meth:`submit_delay` does for a submit while
        nothing is :attr:`limited`): two one-second buckets for the measured rate."""
        elapsed = at - self._bucket_start
        if elapsed >= 1.0:
            self._count_prev = self._count_now if elapsed < 2.0 else 0
            self._count_now = 0
            self._bucket_start = at if elapsed >= 2.0 else self._bucket_start + 1.0
        self._count_now += 1

    def _measured(self, now: float) -> float:
        """Submits per second sent over about the last second (a sliding estimate)."""
        elapsed = now - self._bucket_start
        if elapsed >= 2.0:
            return 0.0
        if elapsed >= 1.0:
            return self._count_now * (2.0 - elapsed)
        return self._count_prev * (1.0 - elapsed) + self._count_now


class Breaker:
    """The outage breaker: a streak of failed submits pauses submission (module docstring)."""

    __slots__ = ("last_error", "open_until", "pause", "probing", "streak", "threshold")

    def __init__(self, *, threshold: int, pause: float) -> None:
        #: Failed submits in a row that open the breaker (0: never).
        self.threshold = threshold
        #: Seconds the breaker stays open before a probe is let through.
        self.pause = pause
        self.streak = 0
        self.open_until: float | None = None
        self.probing = False
        self.last_error = ""

    def refusal(self, now: float) -> float | None:
        """None when a submit may be sent now; else the seconds until a probe may be.

        Once the pause is over, the first caller becomes the probe (``probing``); the others
        are refused until it is answered."""
        until = self.open_until
        if until is None:
            return None
        if now < until:
            return until - now
        if self.probing:
            return self.pause
        self.probing = True
        return None

    def failed(self, now: float, error: str) -> bool:
        """A submit failed in a way that suggests an outage; True when this opens the breaker."""
        self.streak += 1
        self.last_error = error
        if self.probing or (self.threshold and self.streak >= self.threshold and self.open_until is None):
            self.probing = False
            self.open_until = now + self.pause
            return True
        return False

    def answered(self) -> None:
        """A submit reached the provider and got an answer that shows it is up."""
        self.streak = 0
        self.probing = False
        self.open_until = None

    def release(self) -> None:
        """The probe ended without telling anything (cancelled, refused locally): the next
        submit probes instead."""
        self.probing = False
