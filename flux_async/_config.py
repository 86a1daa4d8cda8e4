"""The session's configuration values and its counters: :class:`Limits`,
:class:`SessionStatistics` (with :class:`ModelSpend`, what one model cost), and where an API
key is read from.

Frozen values and one lookup in the environment; no I/O beyond ``os.environ``, no event loop,
nothing from the session, transport, scheduler or codecs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from ._checks import check_int, check_number, check_seconds
from .errors import ConfigurationError
from .ledger import LedgerEntry
from .models import TaskRef

__all__ = ["API_KEY_ENV", "Limits", "ModelSpend", "SessionStatistics", "resolve_api_key"]

#: Environment variables read for each provider's key, in order, before ``FLUX_ASYNC_API_KEY``.
API_KEY_ENV: Mapping[str, str] = {
    "toapis": "TOAPIS_API_KEY",
    "apimart": "APIMART_API_KEY",
    "bfl": "BFL_API_KEY",
}
_FALLBACK_KEY_ENV = "FLUX_ASYNC_API_KEY"


@attrs.frozen(kw_only=True)
class Limits:
    """Bounds on concurrency, memory and time. Every field is keyword-only.

    ``max_active_tasks`` / ``max_active_per_model`` default to the provider's documented caps
    (BFL: 24 per account, 6 for flux-kontext-max) so the client never causes a cap 429; pass a
    number to match your account, or 0 to disable. ``job_timeout`` is each job's deadline from
    its submission (``TaskTimeoutError`` after it; the remote task may still run).
    ``read_timeout`` bounds each API request from start to full answer (connecting included,
    which ``connect_timeout`` bounds on its own); for a download it bounds each read.

    ``max_spend_usd`` caps what the session may spend, in US dollars: every submit first
    reserves its cost (price x images charged) and is refused with ``BudgetExceededError``,
    before anything is sent, when settled costs plus reservations (jobs in flight, and submits
    in doubt, which count as spent) plus its own would pass the cap. What the session's ledger
    holds from earlier sessions of the same provider counts too (a ``FileLedger`` read back:
    settled entries at their settled cost, unsettled ones at their reservation). Every model
    submitted then needs a known price (``Session(prices=...)``), else ConfigurationError.

    A 429 on a submit or a poll slows the whole session down (a pause for the provider's
    ``Retry-After``, and a submit rate cut in half, recovering step by step); a submit refused
    with 429 is sent again until ``job_timeout`` after its first attempt, and only then fails
    with ``RateLimitError``. ``max_submits_per_second`` is a hard cap on top (None: none).

    ``outage_streak`` submits failing one after another with server errors, transport errors or
    in doubt pause submission (``OutageError``, nothing sent) for ``outage_pause`` seconds;
    then one submit probes the provider, and its success resumes. Accepted tasks are watched
    throughout. 0 disables the breaker.

    ``allow_private_result_hosts`` lets result downloads reach loopback, link-local, private
    and other non-public addresses (by default refused, but for the class of the session's own
    base URL's address: loopback for an emulator on 127.0.0.1).
    """

    max_concurrent_submits: int = 16
    max_outstanding: int = 512
    max_active_tasks: int | None = None
    max_active_per_model: Mapping[str, int] | None = None
    max_connections: int = 64
    max_concurrent_downloads: int = 8
    max_download_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 3
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    job_timeout: float | None = 1800.0
    max_spend_usd: float | None = None
    max_submits_per_second: float | None = None
    outage_streak: int = 10
    outage_pause: float = 30.0
    allow_private_result_hosts: bool = False

    def __attrs_post_init__(self) -> None:
        # Checked here, before a session can send anything: a job_timeout of 0 would pay for a
        # task and give it up at once; max_redirects of -1 would fail every download.
        for name in ("max_concurrent_submits", "max_outstanding", "max_connections", "max_concurrent_downloads"):
            check_int("Limits", name, getattr(self, name), 1)
        check_int("Limits", "max_download_bytes", self.max_download_bytes, 1)
        check_int("Limits", "max_redirects", self.max_redirects, 0)
        check_seconds("Limits", "connect_timeout", self.connect_timeout)
        check_seconds("Limits", "read_timeout", self.read_timeout)
        if self.job_timeout is not None:
            check_seconds("Limits", "job_timeout", self.job_timeout)
        if self.max_active_tasks is not None:
            check_int("Limits", "max_active_tasks", self.max_active_tasks, 0)
        if self.max_submits_per_second is not None:
            check_number("Limits", "max_submits_per_second", self.max_submits_per_second, above=True)
        check_int("Limits", "outage_streak", self.outage_streak, 0)
        check_seconds("Limits", "outage_pause", self.outage_pause)
        cap = self.max_spend_usd
        if cap is not None and (
            isinstance(cap, bool) or not isinstance(cap, (int, float)) or not math.isfinite(cap) or cap < 0
        ):
            raise ConfigurationError("Limits.max_spend_usd must be a number of US dollars, at least 0")
        if not isinstance(self.allow_private_result_hosts, bool):
            raise ConfigurationError(
                f"Limits.allow_private_result_hosts must be True or False, got {self.allow_private_result_hosts!r}"
            )


@attrs.frozen(kw_only=True)
class ModelSpend:
    """What one model's jobs cost a session, in US dollars.

    ``spent_usd`` sums the settled jobs' costs (``settled_jobs`` of them), ``reserved_usd``
    the reservations of the jobs not settled (``open_jobs``: in flight, or in doubt).
    ``unknown_cost_jobs`` counts the jobs, settled or open, whose cost is unknown (no price
    known, nothing reported): the sums leave them out.
    """

    model: str
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    settled_jobs: int = 0
    open_jobs: int = 0
    unknown_cost_jobs: int = 0


@attrs.frozen(kw_only=True)
class SessionStatistics:
    """A snapshot of a session's counters.

    ``outstanding_tasks`` are the tasks still being watched; ``abandoned_tasks`` are accepted
    tasks whose results nobody is waiting for any more (a batch left early, a cancelled
    caller): they are kept here so that nothing paid for is forgotten (resume them by ref).
    ``deduplicated`` counts submits answered with the task their idempotency key already had.
    ``in_doubt`` lists the ledger's intents whose POST may or may not have created a task
    (never sent again silently; see :meth:`Session.recover`); ``unrecorded_tasks`` the accepted
    tasks the ledger failed to record (after the first, the session sends nothing more).

    Money, in US dollars: ``spent_usd`` is what settled jobs cost (the provider's reported cost,
    else the price table's), ``reserved_usd`` what jobs in flight or in doubt hold;
    ``spend_by_model`` breaks both down (:class:`ModelSpend`), and ``unknown_cost_jobs`` counts
    the jobs left out of the sums because their cost is unknown. They include what the ledger
    held from earlier sessions when this one started (``carried_over_usd`` of it), as the budget
    does; ``max_spend_usd`` is the budget (None: none).

    ``webhooks_received`` counts the webhook events handed to :meth:`Session.notify` (after
    verification), ``webhooks_refused`` the deliveries :meth:`Session.notify_webhook` refused,
    and ``webhook_wakes`` the events that moved a task's poll to now (the rest were duplicates,
    too soon after a poll, or about tasks this session does not watch).
    ``outage_refusals`` counts the submits refused while the outage breaker was open.
    Under a coordinator, ``adopted_tasks`` counts the tasks taken over from processes that
    stopped, and ``coordinator_failures`` the calls to it that failed after a task was accepted
    (logged; the task was watched and settled here all the same).
    """

    provider: str
    submitted: int
    submit_attempts: int
    submit_retries: int
    recovered_submits: int
    uncertain_submits: int
    succeeded: int
    failed: int
    outstanding: int
    outstanding_tasks: tuple[TaskRef, ...]
    abandoned_tasks: tuple[TaskRef, ...]
    active_tasks: int
    polls_sent: int
    polls_per_finished_task: float
    poll_retries: int
    rate_limited: int
    uploads: int
    upload_cache_hits: int
    downloads: int
    deduplicated: int = 0
    in_doubt: tuple[LedgerEntry, ...] = ()
    unrecorded_tasks: tuple[TaskRef, ...] = ()
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    spend_by_model: Mapping[str, ModelSpend] = attrs.field(factory=lambda: MappingProxyType({}))
    unknown_cost_jobs: int = 0
    carried_over_usd: float = 0.0
    max_spend_usd: float | None = None
    webhooks_received: int = 0
    webhooks_refused: int = 0
    webhook_wakes: int = 0
    outage_refusals: int = 0
    adopted_tasks: int = 0
    coordinator_failures: int = 0


def resolve_api_key(provider: str, api_key: str | None) -> str:
    """The key given, else the first of the provider's variables (then ``FLUX_ASYNC_API_KEY``) set."""
    if api_key:
        return api_key
    names = [API_KEY_ENV[provider], _FALLBACK_KEY_ENV] if provider in API_KEY_ENV else [_FALLBACK_KEY_ENV]
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    raise ConfigurationError(
        f"no API key for {provider!r}: pass api_key=... or set {' or '.join(names)}"
    )
