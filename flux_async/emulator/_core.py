"""The emulator's state: the task table, limits and counters, over one scenario.

Owns :class:`Core` (creating and charging tasks, duplicate detection, the active-task caps
and the request-rate buckets, the request counters) and the ``/_emulator/stats`` document
(:class:`EmulatorStats`, :class:`TaskStats`). A task's own life is :mod:`._task`'s, which
fault a request gets is :mod:`._faults`'s. No I/O and no aiohttp: every method takes the
current time from the injected clock. The standard library and the emulator's own modules
only; never the client library.

No timer or coroutine exists per task: a task costs its slotted record plus one float per
active-task heap it sits in, and its status is computed when asked for.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Callable
from typing import NotRequired, TypedDict

from ._faults import FaultSource
from ._hooks import WebhookQueue
from ._sampling import uniforms
from ._scenario import PROVIDERS, Scenario
from ._task import (
    CANCELLED,
    CONTENT_MODERATED,
    DONE,
    FAILED,
    OK,
    OUTCOME_NAMES,
    REQUEST_MODERATED,
    Task,
    provider_status,
    task_id,
)
from ._validate import Spec

__all__ = ["Core", "EmulatorStats", "TaskStats"]


class TaskStats(TypedDict):
    """One task's row in the stats (see the package docstring for the meaning of each key)."""

    id: str
    provider: str
    model: str
    status: str
    provider_status: str
    outcome: str
    submits: int
    polls: int
    lookups: int
    downloads: int
    created_at: float
    duration: float
    completed_at: float | None
    first_terminal_poll_at: float | None
    client_business_id: str | None
    duplicate_of: str | None
    n: int
    cost_usd: float | None
    charged_usd: float | None


class EmulatorStats(TypedDict):
    """The ``/_emulator/stats`` document (``tasks`` is absent with ``?tasks=0``)."""

    now: float
    requests: dict[str, int]
    by_provider: dict[str, dict[str, int]]
    status_codes: dict[str, int]
    tasks_created: int
    duplicate_submits: int
    bfl_global_polls: int
    rate_limited: dict[str, int]
    dropped_connections: dict[str, int]
    faults: dict[str, int]
    active_now: dict[str, int]
    active_high_water: dict[str, int]
    pending_scripted_faults: int
    charged_usd: float
    webhooks: dict[str, int]
    tasks: NotRequired[list[TaskStats]]


class Core:
    """Everything the handlers share. One instance per running emulator."""

    def __init__(self, scenario: Scenario, clock: Callable[[], float]) -> None:
        self.clock = clock
        #: ``scheme://host[:port]`` that the URLs the emulator hands out (BFL's ``polling_url``,
        #: result and upload URLs) start with: set by the server once it is listening. A request's
        #: ``Host`` header is used only while it is unset (an application served without
        #: :class:`~flux_async.emulator.Emulator`).
        self.origin: str | None = None
        self.epoch = 0
        self.scenario = scenario
        self.plans: dict[str, Scenario] = {}
        self.keys: dict[str, tuple[frozenset[str], frozenset[str], frozenset[str]]] = {}
        self.faults = FaultSource()
        #: Webhook deliveries waiting for their time (posted by the app's sender).
        self.webhooks = WebhookQueue(clock, self.faults)
        self.latency_rng = random.Random(f"{scenario.seed}:latency")
        self._buckets: dict[str, list[float]] = {}
        self.set_scenario(scenario)
        self._clear()

    # -- scenario ------------------------------------------------------------------------------

    def set_scenario(self, scenario: Scenario) -> None:
        """Switch behaviour; tasks and counters stay, the fault script is replaced."""
        self.scenario = scenario
        self.plans = {p: scenario.for_provider(p) for p in PROVIDERS}
        self.keys = {
            p: (frozenset(sc.api_keys), frozenset(sc.forbidden_keys), frozenset(sc.no_credit_keys))
            for p, sc in self.plans.items()
        }
        self.faults.arm(scenario, self.plans)
        self._buckets.clear()
        self.latency_rng = random.Random(f"{scenario.seed}:latency")

    def reset(self) -> None:
        """Forget every task and counter (the scenario stays; its fault script is re-armed).

        Task ids after a reset differ from those before it, so a stale id is never mistaken
        for a new task.
        """
        self.epoch += 1
        self._clear()
        self.set_scenario(self.scenario)

    def _clear(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.by_cbid: dict[str, Task] = {}
        self.fingerprints: dict[int, Task] = {}
        self.counters: dict[str, int] = dict.fromkeys(PROVIDERS, 0)
        self.active: dict[str, list[float]] = {}
        self.high_water: dict[str, int] = {}
        self.requests: dict[str, int] = dict.fromkeys(
            ("submit", "poll", "lookup", "upload", "download", "other"), 0
        )
        self.by_provider: dict[str, dict[str, int]] = {p: {} for p in PROVIDERS}
        self.status_codes: dict[int, int] = {}
        self.rate_limited = {"cap": 0, "rate": 0, "scripted": 0}
        self.dropped = {"submit_before_create": 0, "submit_after_create": 0, "other": 0}
        self.faults.sent = {}
        self.webhooks.clear()
        self.duplicate_submits = 0
        self.tasks_created = 0
        self.bfl_global_polls = 0

    # -- counting ------------------------------------------------------------------------------

    def count(self, provider: str, endpoint: str, status: int) -> None:
        """Record one answered request."""
        self.requests[endpoint] += 1
        per = self.by_provider[provider]
        per[endpoint] = per.get(endpoint, 0) + 1
        self.status_codes[status] = self.status_codes.get(status, 0) + 1

    def count_drop(self, provider: str, endpoint: str, which: str) -> None:
        """Record one request answered by closing the connection."""
        self.requests[endpoint] += 1
        per = self.by_provider[provider]
        per[endpoint] = per.get(endpoint, 0) + 1
        self.dropped[which] += 1

    # -- limits --------------------------------------------------------------------------------

    def rate_check(self, provider: str, sc: Scenario, now: float) -> float | None:
        """Token bucket of ``sc.rate_limit`` requests/s: None if allowed, else seconds to wait."""
        rate = sc.rate_limit
        if rate is None:
            return None
        burst = float(sc.rate_limit_burst or max(1, math.ceil(rate)))
        bucket = self._buckets.get(provider)
        if bucket is None:
            bucket = self._buckets[provider] = [burst, now]
        tokens = min(burst, bucket[0] + max(0.0, now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        bucket[0] = tokens
        return (1.0 - tokens) / rate

    def _active(self, key: str, now: float) -> list[float]:
        heap = self.active.get(key)
        if heap is None:
            heap = self.active[key] = []
        while heap and heap[0] <= now:
            heapq.heappop(heap)
        return heap

    def cap_check(self, provider: str, model: str, sc: Scenario, now: float) -> float | None:
        """None if a task may start, else seconds until the earliest active one ends."""
        caps = sc.active_task_cap
        wait: float | None = None
        for key in (provider, f"{provider}/{model}"):
            heap = self._active(key, now)
            cap = caps.get(key)
            if cap is not None and len(heap) >= cap:
                left = heap[0] - now
                wait = left if wait is None else max(wait, left)
        return wait

    # -- tasks ---------------------------------------------------------------------------------

    def create(self, provider: str, spec: Spec, fingerprint: int, moderated: bool) -> Task:
        """Create (and charge) a task; its outcome and duration are drawn here, once."""
        sc = self.plans[provider]
        now = self.clock()
        k = self.counters[provider]
        self.counters[provider] = k + 1
        if sc.outcome_key == "prompt":
            u_out, u_dur, u_mod, u_seed = uniforms(sc.seed, provider, spec.model, spec.prompt)
        else:
            u_out, u_dur, u_mod, u_seed = uniforms(sc.seed, provider, k)
        duration = sc.duration_for(provider, spec.model).sample(u_dur) * sc.time_scale
        if moderated:
            outcome = REQUEST_MODERATED
        elif u_out < sc.failure_rate:
            outcome = FAILED
        elif u_out < sc.failure_rate + sc.moderation_rate:
            outcome = REQUEST_MODERATED if u_mod < sc.request_moderation_share else CONTENT_MODERATED
        elif u_out < sc.failure_rate + sc.moderation_rate + sc.cancellation_rate:
            outcome = CANCELLED
        else:
            outcome = OK
        seed = spec.seed if spec.seed is not None else int(u_seed * 2**31)
        salt = 0
        while True:
            digest = hashlib.blake2b(
                repr((sc.seed, self.epoch, provider, k, salt)).encode(), digest_size=16
            ).digest()
            ident = task_id(provider, digest)
            if ident not in self.tasks:
                break
            salt += 1
        price = sc.price_for(provider, spec.model)
        cost = None if price is None else round(price * spec.n, 6)
        task = Task(ident, provider, spec, now, duration, outcome, seed, cost)
        self.tasks[ident] = task
        if spec.webhook is not None:
            self.webhooks.schedule(task, spec.webhook, spec.webhook_secret)
        self.tasks_created += 1
        # Duplicate detection: the same client_business_id, or a byte-identical body.
        original = None
        if spec.cbid is not None:
            original = self.by_cbid.get(spec.cbid)
            if original is None:
                self.by_cbid[spec.cbid] = task
        if original is None:
            original = self.fingerprints.get(fingerprint)
            if original is None:
                self.fingerprints[fingerprint] = task
        if original is not None:
            original.submits += 1
            task.duplicate_of = original.id
            self.duplicate_submits += 1
        end = now + duration
        for key in (provider, f"{provider}/{spec.model}"):
            heap = self._active(key, now)
            heapq.heappush(heap, end)
            if len(heap) > self.high_water.get(key, 0):
                self.high_water[key] = len(heap)
        return task

    # -- stats ---------------------------------------------------------------------------------

    def task_stats(self, task: Task, now: float) -> TaskStats:
        """One task's row of ``/_emulator/stats``."""
        sc = self.plans[task.provider]
        phase, _ = task.phase(now, sc.queue_fraction)
        done = phase == DONE
        return {
            "id": task.id,
            "provider": task.provider,
            "model": task.model,
            "status": OUTCOME_NAMES[task.outcome] if done else ("queued", "running")[phase],
            "provider_status": provider_status(task, now, sc),
            "outcome": OUTCOME_NAMES[task.outcome],
            "submits": task.submits,
            "polls": task.polls,
            "lookups": task.lookups,
            "downloads": task.downloads,
            "created_at": task.created,
            "duration": task.duration,
            "completed_at": task.end if done else None,
            "first_terminal_poll_at": task.terminal_polled,
            "client_business_id": task.cbid,
            "duplicate_of": task.duplicate_of,
            "n": task.n,
            "cost_usd": task.cost,
            "charged_usd": task.charged,
        }

    def stats(self, *, tasks: bool = True) -> EmulatorStats:
        """The whole ``/_emulator/stats`` document (see the package docstring)."""
        now = self.clock()
        active_now = {key: len(self._active(key, now)) for key in list(self.active)}
        out: EmulatorStats = {
            "now": now,
            "requests": dict(self.requests),
            "by_provider": {p: dict(v) for p, v in self.by_provider.items()},
            "status_codes": {str(k): v for k, v in sorted(self.status_codes.items())},
            "tasks_created": self.tasks_created,
            "duplicate_submits": self.duplicate_submits,
            "bfl_global_polls": self.bfl_global_polls,
            "rate_limited": dict(self.rate_limited),
            "dropped_connections": dict(self.dropped, total=sum(self.dropped.values())),
            "faults": dict(self.faults.sent),
            "active_now": active_now,
            "active_high_water": dict(self.high_water),
            "pending_scripted_faults": self.faults.pending(),
            "charged_usd": round(sum(t.charged or 0.0 for t in self.tasks.values()), 6),
            "webhooks": self.webhooks.stats(),
        }
        if tasks:
            out["tasks"] = [self.task_stats(t, now) for t in self.tasks.values()]
        return out

