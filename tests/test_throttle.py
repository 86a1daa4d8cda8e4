"""The session's pacing and its outage breaker, as plain state: no loop, no clock, no server."""

from __future__ import annotations

import pytest

from flux_async import Limits
from flux_async._throttle import MIN_RATE, RECOVERY, Breaker, Throttle
from flux_async.errors import ConfigurationError

# -- Throttle ----------------------------------------------------------------------------------


def test_an_unlimited_throttle_never_delays() -> None:
    throttle = Throttle()
    assert [throttle.submit_delay(t / 1000) for t in range(1000)] == [0.0] * 1000
    assert throttle.rate is None
    assert not throttle.limited


def test_a_hard_cap_spaces_submits_evenly() -> None:
    throttle = Throttle(cap=10.0)
    starts = [0.0 + throttle.submit_delay(0.0) for _ in range(5)]
    assert starts == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    # Asking without reserving takes no slot.
    assert throttle.submit_delay(0.0, reserve=False) == pytest.approx(0.5)
    assert throttle.submit_delay(0.0, reserve=False) == pytest.approx(0.5)


def test_a_429_pauses_submits_and_halves_the_measured_rate() -> None:
    throttle = Throttle()
    for i in range(40):  # 40 submits within 0.2 s: about 40 per second measured
        throttle.submit_delay(i * 0.005)
    throttle.rate_limited(0.2, 2.0, sent_at=0.19)
    assert throttle.rate == pytest.approx(20.0)
    assert throttle.submit_delay(0.2) == pytest.approx(2.0)  # the pause first...
    assert throttle.submit_delay(0.2) == pytest.approx(2.05)  # ...then one slot per 1/20 s


def test_the_rate_is_cut_once_per_round_and_never_below_the_floor() -> None:
    throttle = Throttle()
    for i in range(40):
        throttle.submit_delay(i * 0.005)
    throttle.rate_limited(0.2, 0.001, sent_at=0.1)
    first = throttle.rate
    # 429s for submits sent before that cut say nothing about the new rate.
    for _ in range(30):
        throttle.rate_limited(0.21, 0.001, sent_at=0.15)
    assert throttle.rate == first
    # Each later round halves it, down to the floor.
    now = 0.3
    for _ in range(20):
        throttle.rate_limited(now, 0.001, sent_at=now)
        now += 0.01
    assert throttle.rate == MIN_RATE


def test_a_poll_429_cuts_at_most_once_a_second_and_not_when_nothing_is_submitted() -> None:
    throttle = Throttle()
    throttle.rate_limited(5.0, 1.0)
    assert throttle.rate is None  # no submit measured: nothing to cut
    assert throttle.submit_delay(5.0, reserve=False) == pytest.approx(1.0)  # but paused
    for i in range(20):
        throttle.submit_delay(10.0 + i * 0.01)
    throttle.rate_limited(10.2, 0.01)
    cut = throttle.rate
    assert cut is not None
    throttle.rate_limited(10.5, 0.01)
    assert throttle.rate == cut
    throttle.rate_limited(11.3, 0.01)
    assert throttle.rate is not None
    assert throttle.rate < cut


def test_accepted_submits_recover_the_rate_additively_then_lift_it() -> None:
    throttle = Throttle()
    throttle.submit_delay(0.0)
    throttle.rate_limited(0.0, 0.1, sent_at=0.0)
    assert throttle.rate == pytest.approx(0.5)  # half the one submit a second measured
    throttle.accepted(0.5)
    assert throttle.rate == pytest.approx(0.5 + 0.5 * RECOVERY)
    # Twice the rate measured when the first 429 came: the adaptive limit is dropped.
    throttle.accepted(60.0)
    assert throttle.rate is None
    assert throttle.submit_delay(61.0) == 0.0
    assert not throttle.limited


# -- Breaker -----------------------------------------------------------------------------------


def test_the_breaker_opens_after_the_streak_and_lets_one_probe_through_after_the_pause() -> None:
    breaker = Breaker(threshold=3, pause=30.0)
    assert breaker.refusal(0.0) is None
    assert not breaker.failed(1.0, "ServerError: 503")
    assert not breaker.failed(1.0, "ServerError: 503")
    assert breaker.failed(1.0, "TransportError: reset")
    assert breaker.last_error == "TransportError: reset"
    assert breaker.refusal(2.0) == pytest.approx(29.0)
    assert breaker.refusal(31.0) is None  # the probe
    assert breaker.probing
    assert breaker.refusal(31.0) == 30.0  # the others wait for its answer
    assert breaker.failed(32.0, "ServerError: 503")  # still down: open again
    assert breaker.refusal(33.0) == pytest.approx(29.0)
    assert breaker.refusal(62.0) is None
    breaker.answered()  # back
    assert breaker.refusal(62.0) is None
    assert breaker.streak == 0


def test_a_probe_that_tells_nothing_hands_over_to_the_next_submit() -> None:
    breaker = Breaker(threshold=1, pause=5.0)
    breaker.failed(0.0, "x")
    assert breaker.refusal(5.0) is None
    breaker.release()  # cancelled, or refused locally
    assert breaker.refusal(5.0) is None
    assert breaker.probing


def test_an_answer_resets_the_streak_and_a_zero_threshold_never_opens() -> None:
    breaker = Breaker(threshold=3, pause=1.0)
    for _ in range(10):
        breaker.failed(0.0, "x")
        breaker.failed(0.0, "x")
        breaker.answered()
    assert breaker.open_until is None
    never = Breaker(threshold=0, pause=1.0)
    assert not any(never.failed(0.0, "x") for _ in range(1000))
    assert never.refusal(0.0) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("outage_streak", -1),
        ("outage_streak", 2.5),
        ("outage_pause", 0),
        ("outage_pause", float("inf")),
        ("max_submits_per_second", 0),
        ("max_submits_per_second", -3.0),
        ("max_submits_per_second", True),
    ],
)
def test_limits_refuse_bad_pacing_fields(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"Limits.{field}"):
        Limits(**{field: value})  # type: ignore[arg-type]
